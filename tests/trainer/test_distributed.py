"""Ray Train (v2): 2 CPU workers (gloo) stream a dataset from moto S3 and checkpoint to S3."""

from __future__ import annotations

import math
from pathlib import Path

from tests.trainer.support import ingest_tiny, tiny_run
from trainer import checkpoint as ckpt
from trainer.distributed import launch
from trainer.loop import read_metrics


def test_two_workers_train_from_s3_and_checkpoint_there(
    tmp_path: Path, s3_bucket: str, ray_local: None
) -> None:
    dataset = ingest_tiny(tmp_path, f"s3://{s3_bucket}/datasets/tiny")
    output = f"s3://{s3_bucket}/runs/tiny"
    cfg = tiny_run(
        dataset,
        output,
        tmp_path,
        "workers=2",
        "steps=3",
        "checkpoint.every=2",
        "checkpoint.keep=1",
        "data.loader_workers=0",
    )

    result = launch(cfg, max_failures=0, storage_path=str(tmp_path / "ray"))

    assert result.error is None
    ref = ckpt.latest(output)
    assert ref is not None and ref.step == 3 and ref.location.uri.startswith(f"s3://{s3_bucket}/runs/tiny/")
    state = ckpt.load(ref)
    assert state["step"] == 3
    listed = ckpt.checkpoints_root(output).fs.ls(f"{s3_bucket}/runs/tiny/checkpoints", detail=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in listed) == ["latest", "step-00000003"]  # keep=1 on S3
    records = read_metrics(output)
    assert [r["step"] for r in records] == [1, 2, 3]
    # rank 0's half of each global batch of 4, from the remote shards through the local cache
    assert all(len(r["keys"]) == 2 and math.isfinite(r["loss"]) for r in records)
    assert any((tmp_path / "cache").rglob("*.mds*"))


def _train_worker_pids() -> list[int]:
    """PIDs of Ray Train workers of this session's Ray (descendants of this test process)."""
    import psutil

    return [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "RayTrainWorker" in " ".join(p.cmdline() if p.is_running() else [])
    ]


def test_elastic_run_survives_a_killed_worker(tmp_path: Path, ray_local: None) -> None:
    """Workers (1, 2): one worker is SIGKILLed after the step-2 checkpoint; Ray Train restarts the
    group and the loop resumes from the latest checkpoint and reaches the last step."""
    import os
    import signal
    import threading
    import time

    dataset = ingest_tiny(tmp_path, str(tmp_path / "ds"))
    output = tmp_path / "run"
    cfg = tiny_run(
        dataset,
        str(output),
        tmp_path,
        "workers=[1, 2]",
        "steps=24",
        "checkpoint.every=2",
        "data.loader_workers=0",
    )
    killed: list[int] = []

    def kill_one_worker_after_first_checkpoint() -> None:
        pointer = output / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pointer.exists():
            time.sleep(0.05)
        pids = _train_worker_pids()
        if pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    killer = threading.Thread(target=kill_one_worker_after_first_checkpoint)
    killer.start()
    result = launch(cfg, max_failures=2, storage_path=str(tmp_path / "ray"))
    killer.join()

    assert killed, "no Ray Train worker was found to kill"
    assert result.error is None
    ref = ckpt.latest(str(output))
    assert ref is not None and ref.step == 24
    records = read_metrics(str(output))
    assert [r["step"] for r in records] == list(range(1, 25))
    # the steps after the kill ran in a restarted worker group that resumed from a checkpoint
    restarted = [r for r in records if r["resumed_from"] is not None]
    assert restarted and restarted[0]["step"] == restarted[0]["resumed_from"] + 1 >= 3
    assert {r["world_size"] for r in records} <= {1, 2}
