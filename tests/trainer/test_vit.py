"""The ViT backbone: sizes, meta-device construction, position interpolation, masking, options."""

from __future__ import annotations

import time

import pytest
import torch

from radforge.trainer.models import VIT_SIZES, VisionTransformer
from radforge.trainer.models.pos_embed import resample_grid

torch.set_num_threads(2)

# Parameter counts with one input channel and patch 16 (RECIPE.md: ~86M, ~303M, ~1.1B).
EXPECTED_PARAMS = {
    "vit_tiny": 5.4e6,
    "vit_small": 21.5e6,
    "vit_base": 86e6,
    "vit_large": 303e6,
    "vit_giant": 1.1e9,
}


def small_vit(**kwargs: object) -> VisionTransformer:
    torch.manual_seed(0)
    defaults: dict[str, object] = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    return VisionTransformer(**(defaults | kwargs))  # type: ignore[arg-type]


def reference_forward(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The ViT written out by hand, with the stored position table added as is (no resampling)."""
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1) + model.pos_embed.weight
    for block in model.blocks:
        tokens = block(tokens)
    return model.norm(tokens)


@pytest.mark.parametrize("name", list(VIT_SIZES))
def test_size_parameter_count_on_meta(name: str) -> None:
    start = time.perf_counter()
    with torch.device("meta"):
        model = VIT_SIZES[name]()
    elapsed = time.perf_counter() - start
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(EXPECTED_PARAMS[name], rel=0.04), f"{name}: {count / 1e6:.1f}M"
    assert all(p.is_meta for p in model.parameters())
    assert elapsed < 2.0, f"{name} took {elapsed:.2f}s to build on the meta device"


def test_giant_shape_matches_dinov2_giant2() -> None:
    with torch.device("meta"):
        model = VIT_SIZES["vit_giant"]()
    block = model.blocks[0]
    assert (model.embed_dim, model.depth, block.attn.num_heads) == (1536, 40, 24)
    assert block.mlp.w3.in_features == 4096  # SwiGLU hidden width


def test_meta_build_then_init_weights_fills_every_tensor() -> None:
    with torch.device("meta"):
        model = small_vit(num_registers=2, layerscale_init=1e-5)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(float("nan"))
    model.init_weights()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    assert torch.all(model.blocks[0].ls1.gamma == 1e-5)
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)
    assert torch.all(model.mask_token == 0)
    assert model.blocks[1].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_position_embedding_is_untouched_at_native_size() -> None:
    model = small_vit().eval()
    pos = model.pos_embed.weight[:, 1:]
    assert resample_grid(pos, src=(4, 4), dst=(4, 4)) is pos
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        ref = reference_forward(model, x)
    assert torch.equal(feats.cls, ref[:, 0])
    assert torch.equal(feats.patches, ref[:, 1:])


def test_position_embedding_interpolates_to_512() -> None:
    model = VIT_SIZES["vit_tiny"](img_size=224, patch_size=16, depth=2).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 1, 512, 512))
    assert feats.patches.shape == (1, 32 * 32, 192)
    assert torch.isfinite(feats.patches).all()
    # resampling keeps a constant table constant and a row ramp increasing down the rows, flat across
    const = torch.full((1, 196, 3), 0.7)
    assert torch.allclose(resample_grid(const, src=(14, 14), dst=(32, 32)), torch.tensor(0.7), atol=1e-5)
    rows = torch.arange(14.0).repeat_interleave(14).view(1, 196, 1)
    up = resample_grid(rows, src=(14, 14), dst=(32, 32)).view(32, 32)
    assert (up[1:, 5] > up[:-1, 5]).all()
    assert torch.allclose(up, up[:, :1].expand_as(up), atol=1e-5)


def test_non_multiple_input_size_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        small_vit()(torch.randn(1, 1, 36, 32))


def test_fully_masked_inputs_give_input_independent_patch_tokens() -> None:
    model = small_vit().eval()
    masks = torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        model.mask_token.normal_()
        a = model.forward_features(torch.randn(2, 1, 32, 32), masks=masks)
        b = model.forward_features(torch.randn(2, 1, 32, 32), masks=masks)
        c = model.forward_features(torch.randn(2, 1, 32, 32))
    assert torch.allclose(a.patches, b.patches, atol=1e-6)
    assert not torch.allclose(a.patches, c.patches, atol=1e-3)


def test_registers_are_returned_separately() -> None:
    model = small_vit(num_registers=4)
    feats = model.forward_features(torch.randn(3, 1, 32, 32))
    assert feats.cls.shape == (3, 48)
    assert feats.registers.shape == (3, 4, 48)
    assert feats.patches.shape == (3, 16, 48)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 1, 32, 32)
    grads = []
    for ckpt in (False, True):
        model = small_vit(checkpoint_blocks=ckpt, layerscale_init=0.5)
        model.forward_features(x).patches.square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_drop_path_is_random_in_training_and_off_in_eval() -> None:
    model = small_vit(drop_path_rate=0.5, layerscale_init=1.0)
    x = torch.randn(8, 1, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_bf16_autocast_forward_backward_on_cpu(ffn: str) -> None:
    model = small_vit(ffn_layer=ffn)
    x = torch.randn(2, 1, 32, 32)
    seen: list[torch.dtype] = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert seen == [torch.bfloat16]  # matmuls ran in bf16 (LayerNorm outputs stay fp32)
    out.float().square().mean().backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert torch.isfinite(model.patch_embed.proj.weight.grad).all()


def test_unknown_ffn_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="mlp, swiglu"):
        small_vit(ffn_layer="geglu")
