"""``radforge dataset verify``: every shard the root index lists exists, has its size and its hashes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from radforge.sharder.catalog import load_catalog
from radforge.storage import resolve


@dataclass(frozen=True)
class Problem:
    """One bad shard: ``kind`` is 'missing', 'truncated', 'size' or 'corrupt'."""

    kind: str
    path: str
    detail: str


@dataclass
class VerifyReport:
    dataset_uri: str
    shards_checked: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_uri": self.dataset_uri,
            "shards_checked": self.shards_checked,
            "samples": self.samples,
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
        }


def check_shard_bytes(data: bytes, info: dict[str, Any]) -> Problem | None:
    """Compare one stored shard file's bytes with its index entry (pure; no I/O)."""
    from radforge.sharder.mds import file_hash

    path = info["basename"]
    expected = int(info["bytes"])
    if len(data) < expected:
        return Problem("truncated", path, f"{len(data)} of {expected} bytes")
    if len(data) != expected:
        return Problem("size", path, f"{len(data)} bytes, index says {expected}")
    for algo, digest in sorted((info.get("hashes") or {}).items()):
        if file_hash(algo, data) != digest:
            return Problem("corrupt", path, f"{algo} hash does not match the index")
    return None


def verify_dataset(uri: str) -> VerifyReport:
    """Check every shard listed by the dataset's root index; missing or bad ones are reported by name."""
    root = resolve(uri)
    catalog = load_catalog(root, must_exist=True, check_schema=False)
    report = VerifyReport(dataset_uri=root.uri)
    fs = root.fs
    for shard in catalog.shards:
        info = shard.get("zip_data") or shard["raw_data"]
        loc = root.join(info["basename"])
        report.shards_checked += 1
        report.samples += int(shard.get("samples", 0))
        if not fs.exists(loc.path):
            report.problems.append(
                Problem("missing", info["basename"], "listed in index.json, not on storage")
            )
            continue
        problem = check_shard_bytes(fs.cat_file(loc.path), info)
        if problem is not None:
            report.problems.append(problem)
    return report
