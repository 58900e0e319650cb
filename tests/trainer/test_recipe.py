"""The recipe configuration: defaults, validation, YAML layering and the shipped recipe files."""

from __future__ import annotations

from pathlib import Path

import pytest

from radforge.trainer.recipe import RecipeConfig, RecipeConfigError, load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_documented_recipe() -> None:
    cfg = RecipeConfig()
    assert (cfg.model.size, cfg.model.patch_size, cfg.model.in_chans, cfg.model.ffn) == (
        "vit_base",
        16,
        1,
        "swiglu",
    )
    assert (cfg.crops.global_count, cfg.crops.global_size, cfg.crops.local_count, cfg.crops.local_size) == (
        2,
        224,
        8,
        96,
    )
    assert cfg.crops.global_scale == (0.32, 1.0) and cfg.crops.local_scale == (0.05, 0.32)
    assert (
        cfg.optim.base_lr == 4e-3
        and cfg.optim.layerwise_decay == 0.9
        and cfg.optim.patch_embed_lr_mult == 0.2
    )
    assert (
        cfg.optim.clip_grad == 3.0 and cfg.model.layerscale_init == 1e-5 and cfg.model.drop_path_rate == 0.3
    )
    assert (cfg.schedule.weight_decay, cfg.schedule.weight_decay_end) == (0.04, 0.4)
    assert (cfg.schedule.momentum_teacher, cfg.schedule.teacher_temp_start, cfg.schedule.teacher_temp) == (
        0.992,
        0.04,
        0.07,
    )
    assert (cfg.heads.num_prototypes, cfg.heads.bottleneck_dim, cfg.heads.hidden_dim) == (65536, 256, 2048)
    assert cfg.loss.koleo_weight == 0.1 and cfg.loss.centering == "sinkhorn" and cfg.loss.sigreg_weight > 0
    assert (
        cfg.masking.prior == "anatomy" and cfg.masking.ratio == (0.1, 0.5) and cfg.masking.probability == 0.5
    )
    assert cfg.crops.content_aware


def test_typo_fails_naming_the_field() -> None:
    with pytest.raises(RecipeConfigError, match="drop_path_rte"):
        load_recipe(overrides=["model.drop_path_rte=0.2"])
    with pytest.raises(RecipeConfigError, match="centering"):
        load_recipe(overrides=["loss.centering=softmax"])


def test_crop_sizes_must_fit_the_patch() -> None:
    with pytest.raises(
        RecipeConfigError, match=r"crops.local_size=98 must be a multiple of model.patch_size=16"
    ):
        load_recipe(overrides=["crops.local_size=98"])
    assert (
        load_recipe(
            overrides=["model.patch_size=14", "crops.local_size=98", "model.img_size=224"]
        ).crops.local_size
        == 98
    )


def test_unknown_random_window_is_refused() -> None:
    with pytest.raises(RecipeConfigError, match="unknown CT window"):
        load_recipe(overrides=["intensity.random_windows=[soft_tissue, lungs]"])


def test_yaml_file_then_overrides_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("model:\n  size: vit_large\nloss:\n  koleo_weight: 0.0\n")
    cfg = load_recipe(path, overrides=["loss.sigreg_weight=0.05", "crops.global_scale=[0.4, 1.0]"])
    assert cfg.model.size == "vit_large" and cfg.loss.koleo_weight == 0.0
    assert cfg.loss.sigreg_weight == 0.05 and cfg.crops.global_scale == (0.4, 1.0)
    saved = tmp_path / "resolved.yaml"
    saved.write_text(cfg.to_yaml())
    assert load_recipe(saved) == cfg


def test_malformed_override_is_refused() -> None:
    with pytest.raises(RecipeConfigError, match="section.field=value"):
        load_recipe(overrides=["model.size"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("recipe-*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path: Path) -> None:
    cfg = load_recipe(path)
    assert cfg.schedule.total_steps > 0
