"""Writers of one dataset, whoever writes: aliases of one dataset and a CLI beside another writer.

Attack (issue 14, attack 4): two ingests of the same series into one dataset at once, through a
symlink alias (local) or a second spelling of the URI (S3), and a CLI ingest while another
writer (a service job, here a real ingest process) writes the dataset. Before the fix both ran:
duplicated keys, and shards deleted under the other writer (``dataset verify`` failed).

Since issue 15 runs of different archives write one dataset at once: two archives holding the same
series both run, and the commit log serialises them (the later commit is refused, that run plans
again and finds nothing left: it commits nothing). Two runs of the same archive still never run
together, through any spelling: the second is refused by the archive's lease, in one line.

Each writer is a real process running the real ingest against the session's Ray. Both are held
at the start of their write (after planning) until the other has arrived there or ended, so that
both certainly plan on the same committed catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from radforge.sharder.verify import verify_dataset
from tests.support import make_archive, read_all

REPO = Path(__file__).parents[2]
DEADLINE_S = 300

# argv: source dataset ray_address workdir name other
WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from radforge.ingest.config import load_config
    from radforge.ingest.pipeline import run_ingest
    from radforge.runtime import ensure_ray
    from radforge.sharder.catalog import DatasetError
    from radforge.sharder.datasink import MDSDatasink

    source, dataset, address, work, name, other = sys.argv[1:7]
    work = Path(work)

    class Rendezvous(MDSDatasink):
        def on_write_start(self, schema=None):
            (work / f"{name}.arrived").touch()
            deadline = time.monotonic() + 240
            while not any((work / f"{other}.{s}").exists() for s in ("arrived", "ended")):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{other} neither arrived nor ended")
                time.sleep(0.05)
            super().on_write_start(schema)

    result = {}
    try:
        ensure_ray(address)
        cfg = load_config(overrides={"shards": {"size_limit": 16384, "samples_per_task": 8}})
        summary = run_ingest(source, dataset, cfg, sink_cls=Rendezvous)
        result = {"committed": summary.committed, "samples": summary.samples_written}
        result["replans"] = summary.replans
    except DatasetError as e:
        result = {"error": type(e).__name__, "message": str(e)}
    finally:
        (work / f"{name}.result").write_text(json.dumps(result))
        (work / f"{name}.ended").touch()
    """
)


def _writer(source: Path, dataset: str, work: Path, name: str, other: str) -> subprocess.Popen[bytes]:
    import ray

    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(source), dataset, address, str(work), name, other],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes], work: Path, name: str) -> dict:
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads((work / f"{name}.result").read_text())


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        assert proc.poll() is None, f"writer ended before {path.name}: {proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"{path.name} did not appear within {DEADLINE_S}s"
        time.sleep(0.05)


@pytest.fixture
def archives(tmp_path: Path) -> tuple[Path, Path]:
    """The same series under two archive names (two parts that would hold the same keys)."""
    first = make_archive(tmp_path / "arch" / "delivery-1", n_ct=2, n_mr=0, seed=3)
    second = tmp_path / "arch" / "delivery-1-again"
    shutil.copytree(first, second)
    return first, second


def _check_one_wrote(results: list[dict], dataset: str, read: dict, *, same_archive: bool = True) -> None:
    """One run committed every sample once; the other was refused (same archive) or, a run of another
    archive holding the same series, was serialised through the log: refused at commit, it planned
    again and committed nothing."""
    committed = [r for r in results if r.get("committed")]
    others = [r for r in results if not r.get("committed")]
    assert len(committed) == 1 and len(others) == 1, results
    if same_archive:
        assert others[0]["error"] == "DatasetBusyError" and "\n" not in others[0]["message"]
    else:
        assert others[0] == {"committed": False, "samples": 0, "replans": 1}, others
    report = verify_dataset(dataset)
    assert report.ok, report.to_dict()
    assert len(read) == committed[0]["samples"] == report.samples  # read_all refuses duplicate keys


@pytest.mark.parametrize(
    ("storage", "same_archive"),
    [("local-symlink", False), ("s3", False), ("local-symlink", True)],  # same archive on s3: the lease tests
    ids=["local-symlink-two-archives", "s3-two-archives", "local-symlink-same-archive"],
)
def test_two_ingests_through_aliases_of_one_dataset_never_interleave(
    ray_local: None,
    archives: tuple[Path, Path],
    tmp_path: Path,
    storage: str,
    same_archive: bool,
    request: pytest.FixtureRequest,
) -> None:
    if storage == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        dataset, alias = f"s3://{bucket}/datasets/ct", f"s3a://{bucket}/datasets/ct/"
    else:
        (tmp_path / "data").mkdir()
        os.symlink(tmp_path / "data", tmp_path / "alias")
        dataset, alias = str(tmp_path / "data" / "ct"), str(tmp_path / "alias" / "ct")
    work = tmp_path / "work"
    work.mkdir()
    procs = {
        "a": _writer(archives[0], dataset, work, "a", "b"),
        "b": _writer(archives[0 if same_archive else 1], alias, work, "b", "a"),
    }
    results = [_finish(proc, work, name) for name, proc in procs.items()]
    read = read_all(tmp_path / "cache", remote=dataset) if storage == "s3" else read_all(dataset)
    _check_one_wrote(results, dataset, read, same_archive=same_archive)


def test_cli_ingest_of_an_archive_another_writer_is_ingesting_is_refused_in_one_line(
    ray_local: None, archives: tuple[Path, Path], tmp_path: Path
) -> None:
    import ray

    dataset = str(tmp_path / "ds")
    work = tmp_path / "work"
    work.mkdir()
    writer = _writer(archives[0], dataset, work, "job", "cli")
    _wait_for(work / "job.arrived", writer)  # the job holds the dataset, planned, about to write
    address = ray.get_runtime_context().gcs_address
    cli = subprocess.run(  # the same archive (a run of another archive would go ahead: see above)
        [sys.executable, "-m", "radforge.cli", "ingest", str(archives[0]), dataset, "--json"]
        + ["--set", f"ray.address={address}", "--set", "shards.size_limit=16384"],
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    (work / "cli.ended").touch()
    job = _finish(writer, work, "job")
    err = cli.stderr.decode().strip()
    cli_result = (
        {"error": "DatasetBusyError", "message": err.splitlines()[-1].removeprefix("radforge: ")}
        if cli.returncode == 1 and err.splitlines()[-1].startswith("radforge: ") and "busy" in err
        else {"committed": cli.returncode == 0, "stderr": err[-2000:]}
    )
    assert "Traceback" not in err
    _check_one_wrote([job, cli_result], dataset, read_all(dataset))
