"""The run config: shipped files load, overrides reach any field, bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data import remove_stale_shared_memory, stale_shared_memory
from trainer.run_config import TrainConfigError, load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUNS = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("recipe-", "ingest")))


@pytest.mark.parametrize("name", RUNS)
def test_shipped_run_configs_load(name: str) -> None:
    cfg = load_train_config(CONFIGS / name)
    assert cfg.recipe_file is not None and Path(cfg.recipe_file).is_file()
    workers = cfg.workers if isinstance(cfg.workers, int) else cfg.workers[1]
    assert cfg.batch.per_worker(workers) * workers == cfg.batch.global_size


def test_recipe_file_then_recipe_section_then_overrides() -> None:
    cfg = load_train_config(
        CONFIGS / "tiny-cpu.yaml", overrides=["recipe.optim.base_lr=0.5", "workers=[1, 2]"]
    )
    assert cfg.recipe.model.embed_dim == 96  # from recipe-tiny-cpu.yaml
    assert cfg.recipe.optim.base_lr == 0.5 and cfg.workers == (1, 2)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("workers=[1, 3]", "not divisible by 3 workers"),
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


def test_stale_segment_names_are_removed_live_ones_kept(tmp_path: Path) -> None:
    for name in ("000007_barrier", "000007_shard_states", "not_streaming", "000007_barrier.lock"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in stale_shared_memory(tmp_path)] == ["000007_barrier", "000007_shard_states"]
    assert remove_stale_shared_memory(tmp_path) == ["000007_barrier", "000007_shard_states"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000007_barrier.lock", "not_streaming"]
