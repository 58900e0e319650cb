"""Schedules, parameter groups and the EMA teacher update."""

from __future__ import annotations

import math

import pytest
import torch

from radforge.trainer.build import build_network, build_optimizer, build_schedules
from radforge.trainer.ema import ema_update
from radforge.trainer.optim import apply_schedule, layer_id, param_groups
from radforge.trainer.recipe import load_recipe
from radforge.trainer.schedules import cosine, scaled_lr, warmup_then_constant

torch.set_num_threads(2)
TINY = [
    "model.size=vit_tiny",
    "model.depth=3",
    "model.embed_dim=48",
    "model.num_heads=3",
    "model.patch_size=8",
    "model.img_size=32",
    "crops.global_size=32",
    "crops.local_size=16",
    "heads.num_prototypes=32",
    "heads.hidden_dim=32",
    "heads.bottleneck_dim=16",
]


def test_cosine_with_warmup() -> None:
    kw = dict(total=110, start=1.0, end=0.1, warmup=10)
    assert cosine(0, **kw) == 0.0
    assert cosine(5, **kw) == pytest.approx(0.5)
    assert cosine(10, **kw) == pytest.approx(1.0)
    assert cosine(60, **kw) == pytest.approx(0.55)
    assert cosine(110, **kw) == pytest.approx(0.1)
    assert cosine(500, **kw) == pytest.approx(0.1)


def test_teacher_temperature_warmup_and_lr_scaling() -> None:
    assert warmup_then_constant(0, warmup=30, start=0.04, end=0.07) == 0.04
    assert warmup_then_constant(15, warmup=30, start=0.04, end=0.07) == pytest.approx(0.055)
    assert warmup_then_constant(99, warmup=30, start=0.04, end=0.07) == 0.07
    assert scaled_lr(4e-3, batch_size=256) == pytest.approx(2e-3)  # sqrt(256 / 1024) = 0.5
    with pytest.raises(ValueError, match="sqrt_1024"):
        scaled_lr(1.0, batch_size=1, rule="cubic")  # type: ignore[arg-type]


def test_recipe_schedules_in_steps() -> None:
    overrides = ["schedule.epochs=10", "schedule.epoch_length=100", "schedule.warmup_epochs=1"]
    cfg = load_recipe(overrides=[*overrides, "schedule.teacher_temp_warmup_epochs=3"])
    s = build_schedules(cfg, global_batch_size=1024)
    first, peak, last = s.at(0), s.at(100), s.at(1000)
    assert first.lr == 0.0 and peak.lr == pytest.approx(4e-3) and last.lr == pytest.approx(1e-6)
    assert first.weight_decay == pytest.approx(0.04) and last.weight_decay == pytest.approx(0.4)
    assert first.momentum == pytest.approx(0.992) and last.momentum == pytest.approx(1.0)
    assert s.at(150).teacher_temp == pytest.approx(0.055) and s.at(300).teacher_temp == pytest.approx(0.07)
    assert first.freeze_last_layer and not peak.freeze_last_layer


def test_layer_ids_follow_dinov2() -> None:
    assert layer_id("cls_token", depth=12) == 0
    assert layer_id("patch_embed.proj.weight", depth=12) == 0
    assert layer_id("blocks.0.attn.qkv.weight", depth=12) == 1
    assert layer_id("blocks.11.mlp.fc2.bias", depth=12) == 12
    assert layer_id("norm.weight", depth=12) == 13


def test_param_groups_decay_freeze_and_weight_decay() -> None:
    cfg = load_recipe(overrides=TINY)
    net = build_network(cfg)
    groups = param_groups(net, depth=3, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    by_param = {id(p): g for g in groups for p in g["params"]}
    bb = net.backbone
    assert by_param[id(bb.blocks[0].attn.qkv.weight)]["lr_multiplier"] == pytest.approx(0.5**3)
    assert by_param[id(bb.blocks[2].attn.qkv.weight)]["lr_multiplier"] == pytest.approx(0.5)
    assert by_param[id(bb.patch_embed.proj.weight)]["lr_multiplier"] == pytest.approx(0.5**4 * 0.2)
    assert by_param[id(net.dino_head.mlp[0].weight)]["lr_multiplier"] == 1.0
    assert by_param[id(bb.blocks[0].attn.qkv.bias)]["wd_multiplier"] == 0.0
    assert by_param[id(bb.blocks[0].norm1.weight)]["wd_multiplier"] == 0.0
    assert by_param[id(bb.blocks[0].ls1.gamma)]["wd_multiplier"] == 0.0
    assert by_param[id(bb.blocks[0].attn.qkv.weight)]["wd_multiplier"] == 1.0
    assert by_param[id(net.dino_head.last_layer.weight)]["last_layer"]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert len(groups) <= 3 * (3 + 2) + 1  # grouped by multipliers, not one group per tensor

    opt = build_optimizer(cfg, net)
    apply_schedule(opt, lr=1.0, weight_decay=0.1, freeze_last_layer=True)
    for g in opt.param_groups:
        assert g["lr"] == (0.0 if g["last_layer"] else pytest.approx(g["lr_multiplier"]))
        assert g["weight_decay"] == pytest.approx(0.1 * g["wd_multiplier"])


def test_ema_update_maths() -> None:
    cfg = load_recipe(overrides=TINY)
    torch.manual_seed(0)
    student, teacher = build_network(cfg), build_network(cfg, teacher=True)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.9)
    for t_new, t_old, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s)
    ema_update(teacher, student, momentum=0.0)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)
    assert math.isclose(
        sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters())
    )
