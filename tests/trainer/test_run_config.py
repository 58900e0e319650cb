"""The run config: shipped files load, overrides reach any field, bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from radforge.trainer.data import micro_batch_indices
from radforge.trainer.run_config import BatchSizeError, TrainConfigError, load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUNS = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("recipe-", "ingest")))


@pytest.mark.parametrize("name", RUNS)
def test_shipped_run_configs_load(name: str) -> None:
    cfg = load_train_config(CONFIGS / name)
    assert cfg.recipe_file is not None and Path(cfg.recipe_file).is_file()
    workers = cfg.workers if isinstance(cfg.workers, int) else cfg.workers[1]
    plan = cfg.batch.plan(workers)
    assert plan.micro_size * plan.accumulation * workers == cfg.batch.global_size


def test_recipe_file_then_recipe_section_then_overrides() -> None:
    cfg = load_train_config(
        CONFIGS / "tiny-cpu.yaml",
        overrides=["recipe.optim.base_lr=0.5", "workers=[1, 2]", "batch.micro_size=8"],
    )
    assert cfg.recipe.model.embed_dim == 96  # from recipe-tiny-cpu.yaml
    assert cfg.recipe.optim.base_lr == 0.5 and cfg.workers == (1, 2)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("workers=[1, 3]", "workers=\\(1, 3\\) is elastic: set batch.micro_size"),
        ("batch.global_size=7", "not divisible by 2 workers"),
        ("recipe.model.size=vit_huge", "recipe.model.size"),
        ("stepz=3", "stepz"),
        ("checkpoint.keep=0", "checkpoint.keep"),
    ],
)
def test_bad_values_are_named(override: str, named: str) -> None:
    extra = ["workers=2"] if override.startswith("batch") else []
    with pytest.raises(TrainConfigError, match=named):
        load_train_config(CONFIGS / "tiny-cpu.yaml", overrides=[*extra, override])


def test_batch_plan_accumulates_to_the_same_global_batch() -> None:
    cfg = load_train_config(
        CONFIGS / "tiny-cpu.yaml", overrides=["batch.global_size=16", "batch.micro_size=2"]
    )
    plans = {w: cfg.batch.plan(w) for w in (1, 2, 4, 8)}
    assert {w: p.accumulation for w, p in plans.items()} == {1: 8, 2: 4, 4: 2, 8: 1}
    assert all(p.micro_batches == 8 and p.per_worker * w == 16 for w, p in plans.items())
    with pytest.raises(BatchSizeError, match=r"micro_size=2 x 3 workers.*counts that fit: \[1, 2, 4, 8\]"):
        cfg.batch.plan(3)
    with pytest.raises(TrainConfigError, match="micro_size=2 x 3 workers"):
        load_train_config(
            CONFIGS / "tiny-cpu.yaml",
            overrides=["batch.global_size=16", "batch.micro_size=2", "workers=[2, 4]"],
        )


@pytest.mark.parametrize(("micro", "k"), [(2, 8), (3, 4), (1, 6)])
def test_micro_batches_hold_the_same_samples_for_every_worker_count(micro: int, k: int) -> None:
    """Streaming deals a global batch one sample at a time (rank r: positions r, r + W, ...); cut by
    micro_batch_indices, rank r's micro-batch a is global micro-batch j = r + W a, for every W | k."""
    g = micro * k
    canonical = {j: list(range(j, g, k)) for j in range(k)}
    for world in (w for w in range(1, k + 1) if k % w == 0):
        got = {}
        for rank in range(world):
            dealt = list(range(rank, g, world))  # this rank's share, in streaming's order
            for a, positions in enumerate(micro_batch_indices(len(dealt), accumulation=k // world)):
                got[rank + world * a] = [dealt[i] for i in positions]
        assert got == canonical, f"{world} workers"
