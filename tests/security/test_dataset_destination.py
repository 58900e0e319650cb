"""A destination that is not a radforge dataset is never written into, and cleanup never deletes foreign data.

Attacks (issue 14, attack 3): ingesting into a folder (or S3 prefix) that exists and holds someone
else's files, through the library and through the CLI; and a radforge dataset with a foreign
folder under its ``parts/``. Before the fix, the ingest "succeeded" and removed everything under
``parts/`` as uncommitted parts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.sharder.catalog import DatasetError, load_catalog
from radforge.storage import resolve
from tests.support import make_archive, read_all

REPO = Path(__file__).parents[2]
SMALL_SHARDS = {"shards": {"size_limit": 16384, "samples_per_task": 8}}
PRECIOUS = {
    "notes.txt": b"three years of notes\n",
    "parts/thesis/chapter-1.tex": b"\\chapter{Introduction}\n",
    "parts/readme.md": b"not yours\n",
    "data/table.csv": b"a,b\n1,2\n",
}


def _plant(root: Path) -> None:
    for rel, data in PRECIOUS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_archive(tmp_path_factory.mktemp("arch") / "hospital-a", n_ct=1, n_mr=1)


def test_ingest_into_a_foreign_folder_is_refused_and_leaves_every_file(
    ray_local: None, archive: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "home-of-someone"
    _plant(foreign)
    before = _files(foreign)
    with pytest.raises(DatasetError, match="not a radforge dataset") as info:
        run_ingest(str(archive), str(foreign), load_config(overrides=SMALL_SHARDS))
    assert str(foreign) in str(info.value) and "\n" not in str(info.value)
    assert _files(foreign) == before  # nothing deleted, nothing added


def test_cli_ingest_into_a_foreign_s3_prefix_is_one_line_and_deletes_nothing(
    ray_local: None, archive: Path, s3_bucket: str
) -> None:
    import ray
    import s3fs

    fs = s3fs.S3FileSystem()
    for rel, data in PRECIOUS.items():
        fs.pipe_file(f"{s3_bucket}/shared/{rel}", data)
    before = {p: fs.cat_file(p) for p in fs.find(f"{s3_bucket}/shared")}
    address = ray.get_runtime_context().gcs_address
    dest = f"s3://{s3_bucket}/shared"
    proc = subprocess.run(
        [sys.executable, "-m", "radforge.cli", "ingest", str(archive), dest]
        + ["--set", f"ray.address={address}"],
        cwd=REPO,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1, err[-2000:]
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("radforge: ") and "not a radforge dataset" in last and "Traceback" not in err
    fs.invalidate_cache()
    assert {p: fs.cat_file(p) for p in fs.find(f"{s3_bucket}/shared")} == before


def test_orphan_cleanup_removes_radforge_leftovers_only(
    ray_local: None, archive: Path, tmp_path: Path
) -> None:
    cfg = load_config(overrides=SMALL_SHARDS)
    first = make_archive(tmp_path / "first", n_ct=1, n_mr=0, seed=5)
    ds = tmp_path / "ds"
    run_ingest(str(first), str(ds), cfg)
    # someone else's folder and file under parts/, and a part folder a dead radforge run left behind
    foreign = {"parts/my-results/scores.npy": b"\x93NUMPY", "parts/keep.txt": b"mine\n"}
    for rel, data in foreign.items():
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_bytes(data)
    orphan = ds / "parts" / "p-00112233445566aa" / "0123456789abcdef"
    orphan.mkdir(parents=True)
    (orphan / "shard.00000.mds").write_bytes(b"half a shard")

    summary = run_ingest(str(archive), str(ds), cfg)

    assert summary.committed
    for rel, data in foreign.items():
        assert (ds / rel).read_bytes() == data, f"{rel} was deleted or changed"
    assert not orphan.parent.exists(), "the dead run's uncommitted part was not removed"
    catalog = load_catalog(resolve(str(ds)))
    assert len(read_all(ds)) == sum(p["samples"] for p in catalog.parts)
