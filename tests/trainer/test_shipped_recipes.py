"""The shipped recipes' schedules, read as a run would see them (issue 18's recipe defects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radforge.trainer.recipe import load_recipe
from radforge.trainer.run_config import load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(CONFIGS.glob("recipe-*.yaml"))


def _runs() -> dict[str, dict]:
    """Every run config (a file with an ``output``), by file name."""
    out = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text())
        if isinstance(tree, dict) and "output" in tree:
            out[path.name] = tree
    return out


STAGES = [name for name, tree in _runs().items() if tree.get("init_from")]


def test_the_high_resolution_stages_are_found() -> None:
    assert {"vit-l-512.yaml", "tiny-cpu-64.yaml"} <= set(STAGES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_warm_ups_take_a_small_part_of_the_run(path: Path) -> None:
    """DINOv2 warms the lr up for 10 of 100 epochs (80 of 500 for giant): at most a fifth of the run."""
    s = load_recipe(path).schedule
    assert s.warmup_epochs <= 0.2 * s.epochs, (s.warmup_epochs, s.epochs)
    assert s.teacher_temp_warmup_epochs <= 0.3 * s.epochs or s.teacher_temp_start == s.teacher_temp


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_started_from_a_pretrained_run_continues_from_its_end_values(name: str) -> None:
    """A stage initialised from a pretrained run keeps that run's end values instead of restarting them.

    DINOv3's high-resolution adaptation: teacher temperature at its final value (no warm-up from
    0.04), teacher momentum at the run's end value (0.999 when that is 1), prototypes not frozen
    again, weight decay at the pretraining run's end value, and a learning rate well below the
    pretraining peak. The
    pretraining run is the shipped run config whose ``output`` the stage's ``init_from`` names.
    """
    runs = _runs()
    base_name = next(n for n, t in runs.items() if t["output"] == runs[name]["init_from"])
    stage = load_train_config(CONFIGS / name).recipe
    base = load_train_config(CONFIGS / base_name).recipe
    s = stage.schedule
    assert s.teacher_temp_start == s.teacher_temp == base.schedule.teacher_temp
    assert s.momentum_teacher >= min(0.999, base.schedule.momentum_teacher_end)
    assert s.freeze_last_layer_epochs == 0
    assert s.weight_decay == s.weight_decay_end == base.schedule.weight_decay_end
    assert stage.optim.base_lr <= 0.1 * base.optim.base_lr
