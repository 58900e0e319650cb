"""Ray Train (v2) and torchrun: 2 CPU workers (gloo) — S3, elastic restarts, the global batch
independent of the worker count (gradient accumulation), FSDP2 with sharded checkpoints."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from radforge.trainer import build_backbone
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.eval.builtin import build_builtin_suite
from radforge.trainer.eval.periodic import PeriodicKnn
from radforge.trainer.export import teacher_backbone
from radforge.trainer.loop import read_metrics, run_training
from radforge.trainer.ray_launcher import launch
from tests.trainer.support import TINY, ingest_tiny, tiny_run

ROOT = Path(__file__).resolve().parents[2]
TERMS = ("loss", "dino", "ibot", "koleo", "sigreg", "grad_norm")
# 1 and 2 workers add the same numbers in another order (gradients summed locally then
# all-reduced vs all-reduced per micro-batch; Sinkhorn sums over a concatenation vs partial sums
# across ranks), so float32 results differ in the last bits (~1e-7 relative per step) and drift
# apart slowly; 1e-4 over a few steps is far below what one different sample or mask gives (~1e-2).
REL = 1e-4


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
    # each global batch of 4 (2 per worker), from the remote shards through the local cache
    assert all(len(r["keys"]) == 4 and math.isfinite(r["loss"]) for r in records)
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
        "batch.micro_size=2",
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


def assert_same_run(a: list[dict], b: list[dict], *, steps: list[int], exact: bool = False) -> None:
    """Same samples per step, in the same order, and the same losses (bit-exact or within REL)."""
    assert [r["step"] for r in a] == steps and [r["step"] for r in b] == steps
    for ra, rb in zip(a, b, strict=True):
        assert ra["keys"] == rb["keys"], f"step {ra['step']}"
        for term in TERMS:
            if exact:
                assert ra[term] == rb[term], f"step {ra['step']} {term}"
            else:
                assert ra[term] == pytest.approx(rb[term], rel=REL), f"step {ra['step']} {term}"


def test_global_batch_does_not_depend_on_workers_and_survives_a_shrink(
    tmp_path: Path, ray_local: None
) -> None:
    """Global batch 4 in micro-batches of 2: one process accumulating 2 micro-batches per step is the
    reference; 2 Ray Train workers (one micro-batch each) run steps 1-3 and checkpoint; then the run
    shrinks to 1 worker (accumulating 2 again), resumes from that checkpoint and runs steps 4-6.
    Every step has the reference's samples in the reference's order and its losses (reduction order)."""
    dataset = ingest_tiny(tmp_path, str(tmp_path / "ds"))
    common = ("batch.micro_size=2", "checkpoint.every=3", "data.loader_workers=0")
    ref = run_training(tiny_run(dataset, str(tmp_path / "ref"), tmp_path, *common, "steps=6"))
    assert {r["accumulation"] for r in ref.metrics} == {2}

    elastic = tmp_path / "elastic"
    # rank 0 alone evaluates at step 2 (replicated) while rank 1 waits in step 3's first collective
    suite = tmp_path / "suite"
    build_builtin_suite(suite, n_volumes=12, size=32, slices=12, real=False)
    periodic = ("eval.every=2", f"eval.tasks={suite}", "eval.max_samples=16")
    result = launch(
        tiny_run(dataset, str(elastic), tmp_path, *common, *periodic, "workers=2", "steps=3"),
        max_failures=0,
        storage_path=str(tmp_path / "ray"),
    )
    assert result.error is None
    shrunk = run_training(tiny_run(dataset, str(elastic), tmp_path, *common, "workers=1", "steps=6"))

    assert shrunk.resumed_from == 3
    records = read_metrics(str(elastic))
    assert [(r["world_size"], r["accumulation"], r["global_batch"]) for r in records] == [(2, 1, 4)] * 3 + [
        (1, 2, 4)
    ] * 3
    assert_same_run(read_metrics(str(tmp_path / "ref")), records, steps=[1, 2, 3, 4, 5, 6])
    assert ["knn_mean" in r for r in records] == [False, True, False, False, False, False]
    # 14 samples, 3 global batches per epoch: the first epoch never repeats a key
    assert len({k for r in records[:3] for k in r["keys"]}) == 12


def _torchrun(output: Path, dataset: str, tmp: Path, *overrides: str) -> None:
    """``radforge train --no-ray`` in 2 processes under torchrun (gloo): the loop makes the group."""
    args = [
        f"data.mix.sources=[{{uri: '{dataset}'}}]",
        f"data.cache_dir={tmp / 'cache'}",
        f"output={output}",
        "metrics.sample_keys=true",
        "data.loader_workers=0",
        *overrides,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "radforge.cli", "train", "--config", str(TINY), "--no-ray", "--json", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp2_two_workers_sharded_checkpoints_and_exact_resume(tmp_path: Path, ray_local: None) -> None:
    """FSDP2 on 2 gloo processes, global batch 8 in micro-batches of 2 (2 per worker per step):
    DCP-sharded checkpoints; a resume from the step-2 checkpoint repeats steps 3-4 bit for bit;
    the losses match one replicated process accumulating 4 micro-batches; the teacher backbone
    reads back whole from the shards without a process group."""
    dataset = ingest_tiny(tmp_path, str(tmp_path / "ds"))
    common = ("parallel=fsdp", "batch.global_size=8", "batch.micro_size=2", "checkpoint.every=2")
    straight = tmp_path / "straight"
    # the periodic kNN on the built-in suite: both ranks run the sharded teacher's forward (it
    # all-gathers), local rank 0 generates the suite first
    periodic = ("eval.every=2", "eval.max_samples=8", f"eval.cache_dir={tmp_path / 'eval'}")
    _torchrun(straight, dataset, tmp_path, *common, *periodic, "steps=4", "checkpoint.keep=2")

    step2 = straight / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in (step2 / "shards").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    saved = ckpt.load(ckpt.CheckpointRef(step=2, location=ckpt.resolve_checkpoint(str(step2)).location))
    assert ckpt.is_sharded(saved) and "student" not in saved  # weights live in the shards only
    knn = PeriodicKnn.from_suite(
        "builtin", builtin_root=tmp_path / "eval" / "builtin-suite", every=2, image_size=32, max_samples=8
    )
    a = read_metrics(str(straight))
    assert ["knn_mean" in r for r in a] == [False, True, False, True]
    during = {k: v for k, v in a[1].items() if k.startswith("knn_")}
    after = knn.evaluate(teacher_backbone(str(step2)).frozen())
    assert during.keys() == after.keys()
    # the same teacher and neighbours; a regression score's float sums may round differently
    np.testing.assert_allclose([during[k] for k in after], list(after.values()), rtol=1e-12, atol=1e-12)

    resumed = tmp_path / "resumed"
    shutil.copytree(step2, resumed / "checkpoints" / step2.name)
    (resumed / "checkpoints" / "latest").write_text(json.dumps({"step": 2, "dir": step2.name}))
    _torchrun(resumed, dataset, tmp_path, *common, "steps=4")

    b = read_metrics(str(resumed))
    assert [r["resumed_from"] for r in b] == [2, 2]
    assert {(r["world_size"], r["accumulation"]) for r in a} == {(2, 2)}
    assert_same_run(a[2:], b, steps=[3, 4], exact=True)

    replicated = run_training(
        tiny_run(dataset, str(tmp_path / "one"), tmp_path, *common[1:], "steps=4", "data.loader_workers=0")
    )
    assert_same_run(replicated.metrics, a, steps=[1, 2, 3, 4])

    teacher = ckpt.load_teacher_backbone(str(straight))
    one = ckpt.load_teacher_backbone(str(tmp_path / "one"))
    vit = build_backbone(tiny_run(dataset, str(straight), tmp_path).recipe)
    vit.load_state_dict(teacher)  # every key, whole tensors
    assert teacher.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(teacher[k], one[k], rtol=1e-4, atol=1e-6)
