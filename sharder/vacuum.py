"""Vacuum: delete the files of parts a compaction replaced, once no reader of an older version needs them.

A compaction (:mod:`radforge.sharder.compact`) leaves the replaced parts' folders and manifests in
place: a reader that opened the dataset before it (a training run, a stock ``StreamingDataset``)
keeps reading them until it reopens. ``vacuum`` removes them once their replacement is older than
a grace period (the compaction entry's ``at`` time in the log), and never a part the log lists as
current (a part re-committed after it was replaced is current again). It also removes the
uncommitted parts of writers that died before their commit
(:func:`radforge.sharder.compact.remove_dead_writers`).
The log is not written: a vacuum run is idempotent and can be repeated or interrupted at any point.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from radforge.sharder.catalog import MANIFESTS, PARTS, DatasetError
from radforge.sharder.commit_log import has_log, read_state
from radforge.sharder.compact import remove_dead_writers, remove_part_files
from radforge.sharder.lease import DatasetBusyError, PartLease
from radforge.storage import resolve

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 3600.0  # longer than any reader keeps a dataset open without reopening it
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``'90s'``, ``'30m'``, ``'1h'``, ``'2d'`` or plain seconds -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"duration {text!r}: expected a number with an optional unit s, m, h or d (e.g. 1h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass
class VacuumSummary:
    """What a vacuum run removed and what it kept for the grace period (part ids only)."""

    dataset_uri: str
    removed: list[str] = field(default_factory=list)  # replaced parts whose files were deleted
    waiting: list[str] = field(default_factory=list)  # replaced less than the grace period ago
    orphans: list[str] = field(default_factory=list)  # uncommitted parts of writers that died

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vacuum_dataset(
    uri: str, *, older_than_s: float = DEFAULT_GRACE_S, now: float | None = None
) -> VacuumSummary:
    """Remove files of parts replaced more than ``older_than_s`` seconds ago (``radforge dataset vacuum``)."""
    if older_than_s < 0:
        raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
    root = resolve(uri)
    if not has_log(root):
        raise DatasetError(f"{root.uri} has no commit log: nothing was ever replaced there")
    now = time.time() if now is None else now
    state = read_state(root)
    summary = VacuumSummary(root.uri)
    for part_id, record in sorted(state.replaced.items()):
        if part_id in state.parts:
            continue  # re-committed since: current again
        folder, manifest = root.join(PARTS, part_id), root.join(MANIFESTS, f"{part_id}.parquet")
        if not folder.fs.exists(folder.path) and not manifest.fs.exists(manifest.path):
            continue  # vacuumed before
        if now - float(record["at"]) < older_than_s:
            summary.waiting.append(part_id)
            continue
        claim = PartLease(root, part_id)  # a writer never reuses a replaced id; the lease makes sure
        try:
            claim.acquire()
        except DatasetBusyError:
            continue
        try:
            remove_part_files(root, part_id)
        finally:
            claim.release()
        summary.removed.append(part_id)
    summary.orphans = remove_dead_writers(root)
    if summary.removed:
        log.info("vacuum of %s removed %d replaced part(s)", root.uri, len(summary.removed))
    return summary
