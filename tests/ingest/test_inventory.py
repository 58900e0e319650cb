"""Incremental listing: a re-scan reads the headers of new and changed objects only (real Ray, disk, moto S3).

Reads are counted twice: by the run summary and by the storage itself. On disk, each source
file's access time is set before the run to a second before its modification time (which is left
unchanged, so the listing is unchanged): the kernel (relatime) moves it forward on the next read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from radforge.ingest.config import load_config
from radforge.ingest.discover import list_entries, read_header
from radforge.ingest.inventory import (
    INVENTORY,
    archive_folder,
    kept_attrs,
    latest_fingerprint,
    listing_fingerprint,
    load_inventory,
    plan_context,
    plan_reuse,
    settle,
)
from radforge.ingest.pipeline import IngestSummary, run_ingest
from radforge.ingest.series import PlanRules, SeriesPlan, group_key, plan_group
from radforge.sharder.datasink import MDSDatasink
from radforge.storage import resolve
from radforge.synthetic import build_synthetic_archive
from tests.support import make_archive

CFG = {"shards": {"size_limit": 1 << 18, "samples_per_task": 64}, "reformat": {"min_side": 16}}
SALT = b"test-salt-0123456789"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _age_access_times(root: Path) -> dict[str, int]:
    """Set every file's atime a second before its mtime (mtime unchanged); returns the atimes set."""
    times = {}
    for path in _files(root):
        st = path.stat()
        os.utime(path, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))
        times[str(path.relative_to(root))] = st.st_mtime_ns - 10**9
    return times


def _read_since(root: Path, aged: dict[str, int]) -> set[str]:
    """Files of ``aged`` read since it was taken (their atime moved)."""
    return {rel for rel, atime in aged.items() if (root / rel).stat().st_atime_ns != atime}


def _probe_access_times(tmp: Path) -> None:
    """This filesystem records reads in atime (else the storage-level counts below would prove nothing)."""
    probe = tmp / "atime-probe"
    probe.mkdir()
    (probe / "f").write_bytes(b"x" * 100)
    aged = _age_access_times(probe)
    assert _read_since(probe, aged) == set()
    (probe / "f").read_bytes()
    assert _read_since(probe, aged) == {"f"}
    shutil.rmtree(probe)


def _ingest(src: str, ds: str, *, overrides: dict[str, Any] | None = None, **kw: Any) -> IngestSummary:
    return run_ingest(src, ds, load_config(overrides={**CFG, **(overrides or {})}), **kw)


def _report(path: Path) -> Any:
    return sorted(json.loads(path.read_text())["series"], key=lambda s: json.dumps(s, sort_keys=True))


def test_unchanged_archive_reads_no_header_and_plans_as_a_full_read(ray_local: None, tmp_path: Path) -> None:
    spec = build_synthetic_archive(str(tmp_path / "export-2026-11"), size=48, n_slices=8, seed=11)
    root, ds = Path(spec.root), tmp_path / "ds"
    first = _ingest(spec.root, str(ds))
    assert first.headers_read == first.objects == len(spec.files()) and first.headers_reused == 0

    _probe_access_times(tmp_path)
    aged = _age_access_times(root)
    again = _ingest(spec.root, str(ds), operator_report=str(tmp_path / "trust" / "again.json"))
    assert (again.headers_read, again.headers_reused) == (0, again.objects)
    assert not again.committed
    # the only objects opened are the pixels of series quarantined while decoding, which every run
    # decodes again (as without an inventory); the rest, 2/3 of this archive, is not opened at all
    quarantined = [s for s in json.loads((tmp_path / "trust" / "again.json").read_text())["series"]]
    retried = {
        o
        for s in quarantined
        if s["status"] == "quarantined" and s["reason"] != "unreadable"
        for o in s["objects"]
    }
    assert _read_since(root, aged) <= retried and len(retried) < len(aged) / 3

    # the same run without the inventory reads every header and plans exactly the same
    full_ds = tmp_path / "ds-without-inventory"
    shutil.copytree(ds, full_ds)
    shutil.rmtree(full_ds / INVENTORY)
    full = _ingest(spec.root, str(full_ds), operator_report=str(tmp_path / "trust" / "full.json"))
    assert (full.headers_read, full.headers_reused) == (full.objects, 0)
    assert (again.series, again.by_status, again.by_reason) == (full.series, full.by_status, full.by_reason)
    assert _report(tmp_path / "trust" / "again.json") == _report(tmp_path / "trust" / "full.json")

    # nothing identifying in the inventory: no planted value, original UID, path, folder name or time
    folder = archive_folder(resolve(str(ds)), spec.root)
    (snapshot,) = [p for p in Path(folder.path).iterdir()]
    text = json.dumps(pq.read_table(snapshot).to_pylist()) + snapshot.name
    for marker in spec.markers():
        assert marker not in text, marker
    for rel in spec.files():  # folder names carry patient names here
        assert rel not in text and all(part not in text for part in Path(rel).parts if "PHI" in part)
    assert "mtime" not in text


def test_a_delivery_reads_only_new_changed_and_joined_objects(ray_local: None, tmp_path: Path) -> None:
    root, ds = tmp_path / "hospital-a", str(tmp_path / "ds")
    make_archive(root, n_ct=2, n_mr=1, seed=31)
    assert _ingest(str(root), ds).headers_read == 18

    # a delivery adds one series: only its 6 objects are read (headers, then pixels)
    make_archive(root / "late", n_ct=1, n_mr=0, seed=32)
    aged = _age_access_times(root)
    added = _ingest(str(root), ds)
    assert (added.headers_read, added.headers_reused) == (6, 18)
    assert added.committed and added.by_status == {"ingested": 1, "skipped": 3}
    assert _read_since(root, aged) == {str(p.relative_to(root)) for p in _files(root / "late")}

    # one object's bytes change: its series is planned again from its objects' headers
    changed = root / "ct31-0" / sorted(os.listdir(root / "ct31-0"))[2]
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF  # a pixel: same size; the mtime moves
    changed.write_bytes(bytes(data))
    aged = _age_access_times(root)
    redo = _ingest(str(root), ds, overrides={"ray": {"distributed_grouping_min_objects": 0}})
    assert (redo.headers_read, redo.headers_reused) == (6, 18)
    assert _read_since(root, aged) == {str(p.relative_to(root)) for p in _files(root / "ct31-0")}

    # a copy of an object joins a series the inventory holds: found once its header is read, then
    # that series' objects are read to plan it again (the copy is counted, never ingested twice)
    shutil.copy(root / "mr31-0" / sorted(os.listdir(root / "mr31-0"))[0], root / "mr31-0" / "copy.dcm")
    aged = _age_access_times(root)
    joined = _ingest(str(root), ds)
    assert (joined.headers_read, joined.headers_reused) == (7, 18)
    assert _read_since(root, aged) == {str(p.relative_to(root)) for p in _files(root / "mr31-0")}
    assert not joined.committed and joined.by_status == {"skipped": 4}

    aged = _age_access_times(root)
    unchanged = _ingest(str(root), ds, overrides={"ray": {"distributed_grouping_min_objects": 0}})
    assert (unchanged.headers_read, unchanged.headers_reused) == (0, 25)
    assert _read_since(root, aged) == set()  # not one object opened


def test_s3_objects_are_compared_by_etag(ray_local: None, s3_bucket: str, tmp_path: Path) -> None:
    local = make_archive(tmp_path / "a", n_ct=2, n_mr=0, seed=41)
    src, ds = f"s3://{s3_bucket}/incoming/2026-12-01", f"s3://{s3_bucket}/datasets/ct"
    loc = resolve(src)
    for path in _files(local):
        loc.fs.put_file(str(path), loc.join(str(path.relative_to(local))).path)
    assert _ingest(src, ds).headers_read == 12
    assert latest_fingerprint(ds, src) == listing_fingerprint(list_entries(loc))
    assert _ingest(src, ds).headers_read == 0

    victim = sorted(_files(local / "ct41-1"))[3]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: another ETag
    loc.fs.pipe_file(loc.join(str(victim.relative_to(local))).path, bytes(data))
    redo = _ingest(src, ds)
    assert (redo.headers_read, redo.headers_reused) == (6, 6)
    assert _ingest(src, ds).headers_read == 0


class FailBeforeCommit(MDSDatasink):
    def on_write_complete(self, write_result: Any) -> None:
        raise RuntimeError("injected: the run dies before its commit")


def test_a_failed_run_leaves_no_inventory(ray_local: None, tmp_path: Path) -> None:
    root, ds = make_archive(tmp_path / "a", n_ct=1, n_mr=0, seed=51), tmp_path / "ds"
    with pytest.raises(RuntimeError, match="injected"):
        _ingest(str(root), str(ds), sink_cls=FailBeforeCommit)
    assert load_inventory(resolve(str(ds)), str(root)) is None and not (ds / INVENTORY).exists()
    assert _ingest(str(root), str(ds)).headers_read == 6


def test_an_inventory_that_cannot_be_read_or_written_fails_no_run(
    ray_local: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, ds = make_archive(tmp_path / "a", n_ct=1, n_mr=0, seed=52), tmp_path / "ds"
    assert _ingest(str(root), str(ds)).headers_read == 6
    shutil.rmtree(ds / INVENTORY)
    (ds / INVENTORY).write_bytes(b"a file where the inventory folder goes")
    make_archive(root / "late", n_ct=1, n_mr=0, seed=53)
    added = _ingest(str(root), str(ds))
    assert added.committed and added.by_status == {"ingested": 1, "skipped": 1}
    assert (added.headers_read, added.headers_reused) == (12, 0)
    assert "inventory was not written (" in caplog.text


def _group_plans(root: Path, **kw: Any) -> list[list[SeriesPlan]]:
    headers: dict[str, list[Any]] = {}
    for path, size, _ in list_entries(resolve(str(root))):
        h = read_header(resolve(str(root)), path, size)
        headers.setdefault(group_key(h), []).append(h)
    return [plan_group(hs, salt=SALT, **kw) for _, hs in sorted(headers.items())]


def test_settle_is_planning_against_the_dataset_now(tmp_path: Path) -> None:
    """A cached plan settled against the series now in the dataset equals a fresh plan_group."""
    spec = build_synthetic_archive(str(tmp_path / "x"), size=32, n_slices=6, seed=3)
    fresh = _group_plans(Path(spec.root), already_ingested=frozenset())
    already = frozenset(p.series_key for plans in fresh for p in plans[::2])
    assert already
    now = _group_plans(Path(spec.root), already_ingested=already)
    settled = [[settle(SeriesPlan.from_json(p.to_json()), already) for p in plans] for plans in fresh]
    assert [[p.to_json() for p in g] for g in settled] == [[p.to_json() for p in g] for g in now]


def test_inventory_of_another_salt_or_rules_is_not_reused(tmp_path: Path) -> None:
    from radforge.ingest.inventory import GroupRecord, Inventory, object_key, object_state

    root = make_archive(tmp_path / "a", n_ct=1, n_mr=0, seed=61)
    entries = list_entries(resolve(str(root)))
    keep = kept_attrs(keep_sex=False, keep_age_bucket=False)
    context = plan_context(SALT, PlanRules(), keep)
    members = [object_key(SALT, p) for p, _, _ in entries]
    inv = Inventory(context=context, fingerprint=listing_fingerprint(entries))
    inv.states = {object_key(SALT, p): str(object_state(SALT, p, s, v)) for p, s, v in entries}
    inv.groups = {"g": GroupRecord(group="g", members=members, plans=[])}
    reuse = plan_reuse(inv, entries, salt=SALT, context=context, already=frozenset())
    assert (reuse.read, reuse.reused_objects) == ([], 6)
    for other in (
        plan_context(b"another-salt-0123456789", PlanRules(), keep),
        plan_context(SALT, PlanRules(max_volumes=1), keep),
        plan_context(SALT, PlanRules(), kept_attrs(keep_sex=True, keep_age_bucket=False)),
    ):
        assert other != context
        assert len(plan_reuse(inv, entries, salt=SALT, context=other, already=frozenset()).read) == 6
    no_version = [(p, s, None) for p, s, _ in entries]
    assert len(plan_reuse(inv, no_version, salt=SALT, context=context, already=frozenset()).read) == 6


@pytest.mark.parametrize("store", ["local", "s3"])
def test_concurrent_writers_of_one_and_of_different_archives(
    store: str, request: pytest.FixtureRequest
) -> None:
    """Snapshots are immutable and per archive: racing writers never corrupt one another's inventory."""
    import threading

    from radforge.ingest.inventory import GroupRecord, Inventory, save_inventory

    if store == "s3":
        ds = resolve(f"s3://{request.getfixturevalue('s3_bucket')}/datasets/ct")
    else:
        ds = resolve(str(request.getfixturevalue("tmp_path") / "ds"))
    archives = ["s3://hospital/a", "s3://hospital/b"]
    start = threading.Barrier(8)

    def write(archive: str, n: int) -> None:
        inv = Inventory(context="c", fingerprint=f"{n:032x}", states={f"o{n}": "s"})
        inv.groups = {f"g{n}": GroupRecord(group=f"g{n}", members=[f"o{n}"], plans=[f'{{"n":{n}}}'])}
        start.wait(timeout=30)
        save_inventory(ds, archive, inv)

    threads = [threading.Thread(target=write, args=(archives[i % 2], i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for k, archive in enumerate(archives):
        inv = load_inventory(ds, archive)
        assert inv is not None and len(inv.groups) == 1
        (n,) = [int(g[1:]) for g in inv.groups]
        assert n % 2 == k and inv.states == {f"o{n}": "s"} and inv.fingerprint == f"{n:032x}"
        assert latest_fingerprint(ds.uri, archive) is not None
        names = ds.fs.ls(archive_folder(ds, archive).path, detail=False, refresh=True)
        assert 1 <= len(names) <= 4  # pruned to the newest two once the races settle
