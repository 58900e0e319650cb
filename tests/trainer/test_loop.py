"""The training loop in one process: checkpoints, metrics, exact resume, clear errors on bad inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from radforge.cli import main as cli_main
from radforge.sharder.schema import SchemaVersionError
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.build import build_schedules, build_train_state
from radforge.trainer.eval.backbone import load_backbone
from radforge.trainer.eval.builtin import build_builtin_suite
from radforge.trainer.eval.periodic import PeriodicKnn
from radforge.trainer.export import teacher_backbone, vit_from_spec
from radforge.trainer.loop import init_from_stage, read_metrics, run_training
from radforge.trainer.models.pos_embed import resize_table
from radforge.trainer.parallel import fsdp_state_dicts, load_fsdp_state_dicts, shard_network
from radforge.trainer.run_config import load_train_config
from radforge.trainer.shm import stale_shared_memory
from tests.trainer.support import TINY, ingest_tiny, tiny_run

TINY_64 = TINY.parent / "tiny-cpu-64.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    root = tmp_path_factory.mktemp("loop-data")
    return ingest_tiny(root, str(root / "ds"))


@pytest.fixture(scope="module")
def eval_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built-in suite (phantoms only, 2D and 3D tasks): a folder of task folders for eval.tasks."""
    root = tmp_path_factory.mktemp("eval-suite")
    build_builtin_suite(root, n_volumes=12, size=32, slices=12, real=False)
    return root


def _eval_overrides(suite: Path, tmp: Path) -> list[str]:
    return ["eval.every=2", f"eval.tasks={suite}", "eval.max_samples=24", f"eval.cache_dir={tmp / 'eval'}"]


def _periodic(suite: Path) -> PeriodicKnn:
    """The evaluation the runs of these tests do (tiny recipe: 32-px inputs, run seed 0)."""
    return PeriodicKnn.from_suite(str(suite), builtin_root=suite, every=2, image_size=32, max_samples=24)


def _knn(record: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in record.items() if k.startswith("knn_")}


def test_run_writes_checkpoints_config_and_metrics(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_run(dataset, str(out), tmp_path, "steps=5", "checkpoint.every=2", "checkpoint.keep=2")
    summary = run_training(cfg)

    assert summary.step == 5 and summary.resumed_from is None
    # every 2 steps and at the end; only the newest two are kept
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000005"]
    ref = ckpt.latest(str(out))
    assert ref is not None and ref.step == 5 and summary.checkpoint == ref.location.uri
    state = ckpt.load(ref)
    assert state["step"] == 5 and state["loader"]["sample_in_epoch"] > 0
    saved = load_train_config(out / "checkpoints" / "step-00000005" / "config.yaml")
    assert saved == cfg  # the resolved config round-trips

    records = read_metrics(str(out))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert math.isfinite(r["loss"]) and r["lr"] >= 0 and r["images_per_s"] > 0
        assert 0.0 <= r["data_wait_fraction"] < 1.0 and len(r["keys"]) == 4
    # 14 samples, 3 full batches of 4 per epoch: an epoch never repeats a key
    assert len({k for r in records[:3] for k in r["keys"]}) == 12
    assert summary.images_per_s > 0 and 0.0 <= summary.data_wait_fraction < 1.0


def _train_in_subprocess(cfg_overrides: list[str], *, kill_at_step: int, output: Path) -> set[str]:
    """``radforge train --no-ray`` in its own process group, SIGKILLed once step ``kill_at_step`` is
    checkpointed; returns the streaming shared-memory segments it left behind."""
    before = {p.name for p in stale_shared_memory()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "radforge.cli", "train", "--config", str(TINY), "--no-ray", *cfg_overrides],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pointer = output / "checkpoints" / "latest"
    try:
        while True:  # poll the published pointer; the run is still going
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            if pointer.exists() and json.loads(pointer.read_text())["step"] >= kill_at_step:
                break
            time.sleep(0.02)
        left = {p.name for p in stale_shared_memory()} - before
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return left


def test_resume_after_sigkill_continues_exactly(dataset: str, tmp_path: Path) -> None:
    """Run A: 7 steps straight. Run B: killed (whole process group) after its step-4 checkpoint,
    then resumed in a new process: steps 5-7 see the same samples and give the same losses."""
    straight = run_training(tiny_run(dataset, str(tmp_path / "a"), tmp_path, "steps=7", "checkpoint.every=4"))
    out_b = tmp_path / "b"
    overrides = [
        f"data.mix.sources=[{{uri: '{dataset}'}}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"output={out_b}",
        "batch.global_size=4",
        "metrics.sample_keys=true",
        "steps=1000",
        "checkpoint.every=4",
    ]
    # the loader keeps no shared-memory segments (shard tables are memory-mapped files): nothing to leak
    _train_in_subprocess(overrides, kill_at_step=4, output=out_b)

    resumed = run_training(tiny_run(dataset, str(out_b), tmp_path, "steps=7", "checkpoint.every=4"))

    assert resumed.resumed_from == 4 and resumed.step == 7
    a = read_metrics(str(tmp_path / "a"))
    b = read_metrics(str(out_b))
    assert [r["step"] for r in b] == list(range(1, 8))
    for ra, rb in zip(a, b, strict=True):
        assert rb["keys"] == ra["keys"], f"step {ra['step']}"
        # bit-exact on CPU: same floats, not just close ones
        for term in ("loss", "dino", "ibot", "koleo", "sigreg", "grad_norm", "lr"):
            assert rb[term] == ra[term], f"step {ra['step']} {term}: {rb[term]} != {ra[term]}"
    assert straight.step == 7


def test_corrupt_checkpoint_is_named(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_run(dataset, str(out), tmp_path, "steps=2", "checkpoint.every=2")
    run_training(cfg)
    state = out / "checkpoints" / "step-00000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # truncated mid-write by something else
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000002/state\.pt cannot be loaded"):
        run_training(tiny_run(dataset, str(out), tmp_path, "steps=4"))

    (out / "checkpoints" / "latest").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/latest is not a valid checkpoint pointer"):
        run_training(tiny_run(dataset, str(out), tmp_path, "steps=4"))


def test_checkpoint_of_another_model_is_refused(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_training(tiny_run(dataset, str(out), tmp_path, "steps=1"))
    wider = tiny_run(dataset, str(out), tmp_path, "steps=2", "recipe.model.embed_dim=48")
    with pytest.raises(ckpt.CheckpointError, match="does not match this run's model"):
        run_training(wider)


def test_incompatible_dataset_is_named(dataset: str, tmp_path: Path) -> None:
    copy = tmp_path / "future-ds"
    shutil.copytree(dataset, copy)
    for entry_file in sorted((copy / "_log").glob("[0-9]*.json")):  # readers learn the version here
        entry = json.loads(entry_file.read_text())
        entry["part"]["schema_version"] = "9.0"
        entry_file.write_text(json.dumps(entry))
    with pytest.raises(SchemaVersionError, match=f"{copy}.*schema 9.0"):
        run_training(tiny_run(str(copy), str(tmp_path / "run"), tmp_path, "steps=1"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_train_in_process(dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--config",
            str(TINY),
            "--no-ray",
            "--json",
            f"data.mix.sources=[{{uri: '{dataset}'}}]",
            f"output={out}",
            "batch.global_size=4",
            "steps=2",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["checkpoint"] == str(out / "checkpoints" / "step-00000002")
    assert summary["images_per_s"] > 0


def test_cli_train_rejects_bad_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "--config", str(TINY), "--no-ray", "batch.global_sise=8"]) == 2
    assert "global_sise" in capsys.readouterr().err


def test_high_resolution_stage_starts_from_the_low_resolution_checkpoint(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """32 px for 2 steps, then `radforge train --config configs/tiny-cpu-64.yaml`: the 64-px stage
    starts from those weights with its position tables resampled, a fresh optimizer and schedule;
    restarted, it resumes from its own checkpoint, not from the low-resolution one again."""
    low = tmp_path / "low"
    run_training(tiny_run(dataset, str(low), tmp_path, "steps=2"))
    saved = ckpt.load_weights(str(low))

    stage = [
        f"init_from={low}",
        f"data.mix.sources=[{{uri: '{dataset}'}}]",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    stage += [
        f"output={tmp_path / 'high'}",
        "batch.global_size=4",
        "checkpoint.every=2",
        "data.loader_workers=0",
    ]
    cfg = load_train_config(TINY_64, overrides=[*stage, "steps=2"])
    state = build_train_state(cfg.recipe, global_batch_size=4, seed=7)
    init_from_stage(state, str(low), sharded=False)
    for name, net in (("student", state.student), ("teacher", state.teacher)):
        table = net.backbone.pos_embed
        assert table.grid == (8, 8) and table.weight.shape[1] == 1 + 64  # 64 px / patch 8
        old = saved[name]["backbone.pos_embed.weight"]
        assert old.shape[1] == 1 + 16  # 32 px
        assert torch.equal(table.weight, resize_table(old, grid=(8, 8)))
        assert torch.equal(table.weight[:, 0], old[:, 0])  # the CLS position is kept
        for k, v in net.state_dict().items():
            if k != "backbone.pos_embed.weight":
                assert torch.equal(v, saved[name][k]), k

    assert cli_main(["train", "--config", str(TINY_64), "--no-ray", "--json", *stage, "steps=2"]) == 0
    records = read_metrics(str(tmp_path / "high"))
    assert [r["step"] for r in records] == [1, 2] and records[0]["resumed_from"] is None
    assert records[0]["lr"] == pytest.approx(build_schedules(cfg.recipe, global_batch_size=4).at(0).lr)
    state_high = ckpt.load(ckpt.resolve_checkpoint(str(tmp_path / "high")))
    assert state_high["teacher"]["backbone.pos_embed.weight"].shape[1] == 65
    assert load_train_config(tmp_path / "high" / "checkpoints" / "step-00000002" / "config.yaml") == cfg

    assert cli_main(["train", "--config", str(TINY_64), "--no-ray", "--json", *stage, "steps=3"]) == 0
    assert read_metrics(str(tmp_path / "high"))[-1]["resumed_from"] == 2
    capsys.readouterr()


def test_metrics_records_have_every_documented_field(dataset: str, tmp_path: Path) -> None:
    """JSONL every metrics.flush_every steps (not only at checkpoints), each field of docs/training.md."""
    out = tmp_path / "run"
    run_training(
        tiny_run(dataset, str(out), tmp_path, "steps=3", "metrics.flush_every=1", "checkpoint.every=10")
    )
    files = sorted(p.name for p in (out / "metrics").glob("*.jsonl"))
    assert files == ["00000001-00000001.jsonl", "00000002-00000002.jsonl", "00000003-00000003.jsonl"]
    documented = Path(__file__).resolve().parents[2].joinpath("docs", "training.md").read_text()
    for record in read_metrics(str(out)):
        for key in record:
            assert f"`{key}`" in documented, f"JSONL field {key} is not documented in docs/training.md"
        assert record["mfu"] is None and record["gpu_memory_gib"] is None  # CPU
        assert record["tokens_per_s"] > record["images_per_s"] > 0 and record["time"] > 0
        assert (record["micro_batch"], record["accumulation"], record["global_batch"]) == (4, 1, 4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_process_fsdp_run_checkpoints_sharded_and_resumes(dataset: str, tmp_path: Path) -> None:
    """parallel=fsdp in one process (what `auto` picks for ViT-L on one GPU): a one-rank group is made
    and released, checkpoints are DCP shards, the run resumes from them, export reads them."""
    out = tmp_path / "run"
    first = run_training(
        tiny_run(dataset, str(out), tmp_path, "parallel=fsdp", "steps=2", "checkpoint.every=2")
    )
    assert not torch.distributed.is_initialized()  # the group made for the run is gone
    ref = ckpt.latest(str(out))
    assert ref is not None and ckpt.is_sharded(ckpt.load(ref))
    assert (out / "checkpoints" / "step-00000002" / "shards" / "__0_0.distcp").is_file()
    again = run_training(
        tiny_run(dataset, str(out), tmp_path, "parallel=fsdp", "steps=3", "checkpoint.every=2")
    )
    assert first.step == 2 and again.resumed_from == 2 and again.step == 3
    teacher = ckpt.load_teacher_backbone(str(out))
    assert teacher["pos_embed.weight"].shape == (1, 1 + 16, 96)
    with pytest.raises(ckpt.CheckpointError, match="is sharded .* but this run is replicated"):
        run_training(tiny_run(dataset, str(out), tmp_path, "parallel=replicate", "steps=4"))


def test_periodic_knn_scores_the_teacher_every_n_steps(
    dataset: str, eval_suite: Path, tmp_path: Path
) -> None:
    """eval.every=2: knn_<task> and knn_mean at steps 2 and 4 only, equal to the kNN scores of the
    teacher saved in that step's checkpoint, not of the student."""
    out = tmp_path / "run"
    overrides = ["steps=5", "checkpoint.every=2", "checkpoint.keep=3", *_eval_overrides(eval_suite, tmp_path)]
    run_training(tiny_run(dataset, str(out), tmp_path, *overrides))

    records = read_metrics(str(out))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [bool(_knn(r)) for r in records] == [False, True, False, True, False]
    periodic = _periodic(eval_suite)
    names = {f"knn_{t.spec.name}" for t in periodic.tasks} | {"knn_mean"}
    assert len(names) == 7  # six tasks of the small suite, 2D and 3D
    for record in (records[1], records[3]):
        step = out / "checkpoints" / f"step-{record['step']:08d}"
        teacher = periodic.evaluate(teacher_backbone(str(step)).frozen())
        assert set(_knn(record)) == names
        np.testing.assert_equal(_knn(record), teacher)  # bit for bit (NaN == NaN)
        # the student of the same checkpoint scores otherwise (R2 of a regression is continuous)
        student = ckpt.load_weights(str(step), networks=("student",))["student"]
        vit = vit_from_spec(teacher_backbone(str(step)).spec)
        vit.load_state_dict(
            {k.removeprefix("backbone."): v for k, v in student.items() if k.startswith("backbone.")}
        )
        assert periodic.evaluate(vit)["knn_position_2d"] != teacher["knn_position_2d"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp_run_evaluates_sharded_teacher_and_exports_it(
    dataset: str, eval_suite: Path, tmp_path: Path
) -> None:
    """parallel=fsdp in one process: the periodic kNN runs through the sharded teacher; `radforge export`
    of the DCP checkpoint gives that teacher's features (loaded back sharded, as a resume does)."""
    out = tmp_path / "run"
    overrides = ["parallel=fsdp", "steps=2", "checkpoint.every=2", *_eval_overrides(eval_suite, tmp_path)]
    cfg = tiny_run(dataset, str(out), tmp_path, *overrides)
    run_training(cfg)
    ref = ckpt.latest(str(out))
    assert ref is not None and ckpt.is_sharded(ckpt.load(ref))

    assert cli_main(["export", str(out), str(tmp_path / "export"), "--json"]) == 0
    frozen = load_backbone(tmp_path / "export")
    assert (
        frozen.weights_hash
        == teacher_backbone(str(out / "checkpoints" / "step-00000002")).frozen().weights_hash
    )
    periodic = _periodic(eval_suite)
    record = read_metrics(str(out))[-1]
    np.testing.assert_equal(_knn(record), periodic.evaluate(frozen))

    # the teacher as the loop holds it: sharded modules filled from the DCP shards by a one-rank group
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        shard = partial(shard_network, mesh=init_device_mesh("cpu", (1,)), param_dtype=None)
        state = build_train_state(cfg.recipe, global_batch_size=4, seed=cfg.seed, shard=shard)
        target = fsdp_state_dicts(state.student, state.teacher, state.optimizer)
        ckpt.load_sharded(ref, target)
        load_fsdp_state_dicts(state.student, state.teacher, state.optimizer, target)
        x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want = state.teacher.backbone.forward_features(x)
    finally:
        dist.destroy_process_group()
    got = frozen(x)
    assert torch.equal(got.cls, want.cls) and torch.equal(got.patches, want.patches)
