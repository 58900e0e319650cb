"""One training step: what it updates, its metrics, its failure mode, and its GPU paths run on CPU.

FSDP2 runs here on a one-process gloo group (CPU): sharded and unsharded steps must agree exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from radforge.ingest.content import analyse
from radforge.synthetic.phantom import ct_phantom
from radforge.trainer import (
    NonFiniteLossError,
    RecipeConfig,
    TrainState,
    ViewBatch,
    build_mask_sampler,
    build_multicrop,
    build_train_state,
    collate_views,
    load_recipe,
    train_step,
)
from radforge.trainer.parallel import compile_blocks, compile_heads, shard_network

torch.set_num_threads(2)
TINY = Path(__file__).resolve().parents[2] / "configs" / "recipe-tiny-cpu.yaml"
METRICS = {"loss", "dino", "ibot", "koleo", "sigreg", "lr", "weight_decay", "momentum", "teacher_temp"}
METRICS |= {"teacher_entropy", "prototype_entropy", "cls_std", "masked_ratio", "grad_norm", "images_per_s"}
METRICS |= {"grad_norm_backbone", "grad_norm_dino_head"}


def recipe(*overrides: str) -> RecipeConfig:
    return load_recipe(TINY, overrides=["heads.num_prototypes=32", *overrides])


@pytest.fixture(scope="module")
def batch() -> ViewBatch:
    cfg = recipe()
    vol = ct_phantom(shape=(10, 64, 64), seed=0)
    samples = []
    for z in range(2, 8):
        image = vol.array[z].astype(np.int16)
        content = analyse(image, modality="CT")
        samples.append(
            (
                image,
                content.fg,
                {"modality": "CT", "window": "raw", "fg_patch": 16, "body_box": list(content.box)},
            )
        )
    rng = np.random.default_rng(0)
    return collate_views(build_multicrop(cfg).batch(samples, rng=rng), masks=build_mask_sampler(cfg), rng=rng)


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [
        (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in module.parameters()
    ]


def test_step_updates_student_and_ema_teacher(batch: ViewBatch) -> None:
    state = build_train_state(recipe(), global_batch_size=6, seed=0)
    state.step = 150  # past warm-up and the frozen prototypes
    student_before, teacher_before = snapshot(state.student), snapshot(state.teacher)
    metrics = train_step(state, batch)
    assert set(metrics) == METRICS
    assert all(np.isfinite(v) for v in metrics.values())
    assert state.step == 151
    m = metrics["momentum"]
    changed = 0
    pairs = zip(
        state.teacher.parameters(), teacher_before, state.student.parameters(), student_before, strict=True
    )
    for t_new, t_old, s_new, s_old in pairs:
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * s_new)
        changed += int(not torch.equal(s_new, s_old))
    assert changed == len(student_before)  # every student tensor moved (all receive gradients)
    assert 0.0 < metrics["masked_ratio"] < 0.5
    assert metrics["lr"] == pytest.approx(state.schedules.at(150).lr)


def test_prototypes_are_frozen_at_the_start(batch: ViewBatch) -> None:
    state = build_train_state(recipe(), global_batch_size=6, seed=0)
    state.step = 50  # warm-up done, prototypes still frozen (first epoch = 100 steps)
    before = state.student.dino_head.last_layer.weight.detach().clone()
    mlp_before = state.student.dino_head.mlp[0].weight.detach().clone()
    train_step(state, batch)
    assert torch.equal(state.student.dino_head.last_layer.weight, before)
    assert not torch.equal(state.student.dino_head.mlp[0].weight, mlp_before)


def test_non_finite_loss_raises_and_leaves_weights_untouched(batch: ViewBatch) -> None:
    state = build_train_state(recipe(), global_batch_size=6, seed=0)
    state.step = 150
    before = snapshot(state.student)
    poisoned = ViewBatch(
        global_crops=batch.global_crops * float("nan"),
        local_crops=batch.local_crops,
        masks=batch.masks,
        n_global=batch.n_global,
        n_local=batch.n_local,
    )
    with pytest.raises(NonFiniteLossError, match="step 150"):
        train_step(state, poisoned)
    assert state.step == 150
    for p, b in zip(state.student.parameters(), before, strict=True):
        assert torch.equal(p, b)


@pytest.mark.parametrize(
    "overrides",
    [
        ("heads.ibot_separate_head=true",),
        ("loss.centering=ema",),
        ("model.num_registers=2", "model.ffn=mlp"),
        ("crops.local_count=0",),
        ("loss.koleo_weight=0", "loss.sigreg_weight=0"),
    ],
    ids=["separate-ibot-head", "ema-centering", "registers-gelu", "no-local-crops", "no-regularisers"],
)
def test_recipe_variants_step(batch: ViewBatch, overrides: tuple[str, ...]) -> None:
    cfg = recipe(*overrides)
    state = build_train_state(cfg, global_batch_size=6, seed=0)
    b = batch
    if cfg.crops.local_count == 0:
        b = ViewBatch(
            global_crops=batch.global_crops,
            local_crops=batch.local_crops[:0],
            masks=batch.masks,
            n_global=batch.n_global,
            n_local=0,
        )
    metrics = train_step(state, b)
    assert np.isfinite(metrics["loss"])
    if cfg.heads.ibot_separate_head:
        assert state.student.ibot_head is not state.student.dino_head


def test_bf16_autocast_step_on_cpu_is_close_to_fp32(batch: ViewBatch) -> None:
    losses = []
    for dtype in (None, torch.bfloat16):
        state = build_train_state(recipe(), global_batch_size=6, seed=0)
        state.step, state.autocast_dtype = 150, dtype
        losses.append(train_step(state, batch)["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


@pytest.fixture
def cpu_mesh(tmp_path: Path) -> Iterator[DeviceMesh]:
    """A one-process gloo group: FSDP2's code path without a GPU."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def run_two_steps(state: TrainState, batch: ViewBatch) -> list[dict[str, Any]]:
    state.step = 150
    return [train_step(state, batch), train_step(state, batch)]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp2_sharded_step_matches_the_plain_step(batch: ViewBatch, cpu_mesh: DeviceMesh) -> None:
    cfg = recipe("heads.ibot_separate_head=true")
    plain = build_train_state(cfg, global_batch_size=6, seed=0)
    shard = functools.partial(shard_network, mesh=cpu_mesh, param_dtype=None, reduce_dtype=None)
    sharded = build_train_state(cfg, global_batch_size=6, seed=0, shard=shard)
    assert type(next(sharded.student.parameters())).__name__ == "DTensor"
    a, b = run_two_steps(plain, batch), run_two_steps(sharded, batch)
    for ma, mb in zip(a, b, strict=True):
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
        assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-4)
    for p, q in zip(snapshot(plain.teacher), snapshot(sharded.teacher), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp2_bf16_mixed_precision_step_runs(batch: ViewBatch, cpu_mesh: DeviceMesh) -> None:
    shard = functools.partial(shard_network, mesh=cpu_mesh)  # bf16 parameters, fp32 reduction
    state = build_train_state(recipe(), global_batch_size=6, seed=0, shard=shard)
    metrics = run_two_steps(state, batch)
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert next(state.student.parameters()).dtype == torch.float32  # sharded master weights stay fp32


def test_compiled_blocks_match_eager(batch: ViewBatch) -> None:
    state = build_train_state(recipe(), global_batch_size=6, seed=0)
    x = batch.global_crops[:2]
    with torch.no_grad():
        eager = state.teacher.backbone(x)
        compile_blocks(state.teacher, backend="eager")
        compiled = state.teacher.backbone(x)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_blocks_are_compiled_before_fully_shard_so_fsdp_hooks_stay_eager(
    batch: ViewBatch, cpu_mesh: DeviceMesh
) -> None:
    """compute.compile_blocks with FSDP2 (DINOv3's order: compile the blocks, then shard them): each
    block's forward is compiled and FSDP's all-gather/reshard hooks run around it, outside the graph
    (compiling the whole call after fully_shard put the hooks inside it). Sharded and compiled, the
    backbone computes what the plain eager one does, in one graph per block and without breaks."""
    from torch.distributed.fsdp import FSDPModule

    cfg = recipe("compute.compile_blocks=true")
    shard = functools.partial(shard_network, mesh=cpu_mesh, param_dtype=None, reduce_dtype=None)
    state = build_train_state(cfg, global_batch_size=6, seed=0, shard=shard)
    for network in (state.student, state.teacher):
        for block in network.backbone.blocks:
            assert isinstance(block, FSDPModule)
            assert hasattr(block.forward, "_torchdynamo_orig_callable")  # the forward is compiled
            assert block._compiled_call_impl is None  # the call with FSDP's hooks is not

    plain = build_train_state(recipe(), global_batch_size=6, seed=0)
    sharded = build_train_state(recipe(), global_batch_size=6, seed=0, shard=shard)
    x = batch.global_crops[:2]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        eager = plain.teacher.backbone(x)
        compile_blocks(sharded.teacher, backend="eager")
        compiled = sharded.teacher.backbone(x)
    torch.testing.assert_close(compiled, eager)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph serves every block


def test_compiled_heads_and_losses_match_eager(batch: ViewBatch) -> None:
    """compute.compile_heads: the same two steps (losses, every term, updated weights) as eager."""
    eager = build_train_state(recipe(), global_batch_size=6, seed=0)
    compiled = build_train_state(recipe(), global_batch_size=6, seed=0)
    compile_heads(compiled.student, compiled.objective, backend="eager")
    assert compiled.student.dino_head._compiled_call_impl is not None  # the hook really installed
    for a, b in zip(run_two_steps(eager, batch), run_two_steps(compiled, batch), strict=True):
        for k in ("loss", "dino", "ibot", "koleo", "sigreg"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    for p, q in zip(eager.student.parameters(), compiled.student.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_analytic_step_flops_match_torch_flop_counter(batch: ViewBatch) -> None:
    """radforge.trainer.flops (used for MFU) against torch's FlopCounterMode on one full step of the recipe.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from radforge.trainer.flops import step_flops

    cfg = recipe()
    state = build_train_state(cfg, global_batch_size=6, seed=0)
    with FlopCounterMode(display=False) as counter:
        train_step(state, batch)
    analytic = step_flops(cfg, images=batch.batch_size, masked_patches=float(batch.masks.sum()))
    # left out on purpose: losses, Sinkhorn, KoLeo's small matmul; backward of the patch embedding
    # needs no input gradient (counted as 2x its forward): a few per cent either way
    assert analytic == pytest.approx(counter.get_total_flops(), rel=0.08)


@pytest.mark.parametrize("sizes", [(2, 2, 2), (3, 3)])
def test_accumulated_micro_batches_step_like_the_same_micro_batches_at_once(
    batch: ViewBatch, sizes: tuple[int, ...]
) -> None:
    """train_step on [mb0, mb1, ...] vs the same call repeated: deterministic (seeded per micro-batch),
    the gradients of all micro-batches are used, and uneven micro-batches are refused."""
    cfg = recipe("model.drop_path_rate=0.2")  # drop path draws: seeded by (seed, step, micro index)
    parts = micro_batches(batch, sizes)
    a = build_train_state(cfg, global_batch_size=6, seed=0)
    b = build_train_state(cfg, global_batch_size=6, seed=0)
    a.step = b.step = 150
    ma, mb = train_step(a, parts), train_step(b, parts)
    assert ma["loss"] == mb["loss"] and ma["grad_norm"] == mb["grad_norm"]
    one = build_train_state(cfg, global_batch_size=6, seed=0)
    one.step = 150
    assert train_step(one, parts[:1])["loss"] != ma["loss"]  # the other micro-batches count
    with pytest.raises(ValueError, match="one size"):
        train_step(one, micro_batches(batch, (4, 2)))


def micro_batches(batch: ViewBatch, sizes: tuple[int, ...]) -> list[ViewBatch]:
    """Split a crop-major ViewBatch into consecutive micro-batches of ``sizes`` images."""
    out, start, b = [], 0, batch.batch_size
    for n in sizes:
        idx = [c * b + i for c in range(batch.n_global) for i in range(start, start + n)]
        lidx = [c * b + i for c in range(batch.n_local) for i in range(start, start + n)]
        out.append(
            ViewBatch(
                global_crops=batch.global_crops[idx],
                local_crops=batch.local_crops[lidx],
                masks=batch.masks[idx],
                n_global=batch.n_global,
                n_local=batch.n_local,
            )
        )
        start += n
    return out


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("separate_ibot_head", [False, True])
def test_gradients_are_clipped_per_part(batch: ViewBatch, separate_ibot_head: bool) -> None:
    """Backbone, DINO head and iBOT head are each clipped to ``clip_grad`` on their own (DINOv2/v3).

    One global norm would let the heads' large early gradients (KoLeo's above all) shrink the
    backbone's update; per part, each is scaled by min(1, clip / its own norm).
    """
    overrides = ("heads.ibot_separate_head=true",) if separate_ibot_head else ()

    def stepped(clip: float | None) -> tuple[TrainState, dict[str, float]]:
        state = build_train_state(recipe(*overrides), global_batch_size=6, seed=0)
        state.step, state.clip_grad = 150, clip
        return state, train_step(state, batch)

    raw_state, _ = stepped(None)
    raw = _grads(raw_state.student)
    parts = ["backbone.", "dino_head."] + (["ibot_head."] if separate_ibot_head else [])
    norms = {
        part: torch.sqrt(sum(g.pow(2).sum() for n, g in raw.items() if n.startswith(part))).item()
        for part in parts
    }
    assert len({round(v, 3) for v in norms.values()}) == len(parts)  # parts differ: the test can tell
    clip = 0.5 * min(norms.values())
    state, metrics = stepped(clip)
    clipped = _grads(state.student)
    assert clipped.keys() == raw.keys()
    for name, g in raw.items():
        part = next(p for p in parts if name.startswith(p))
        torch.testing.assert_close(clipped[name], g * (clip / (norms[part] + 1e-6)), rtol=1e-4, atol=1e-9)
    assert metrics["grad_norm_backbone"] == pytest.approx(norms["backbone."], rel=1e-4)
    assert metrics["grad_norm_dino_head"] == pytest.approx(norms["dino_head."], rel=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp2_reduce_scatters_do_not_grow_with_accumulation(batch: ViewBatch, cpu_mesh: DeviceMesh) -> None:
    """Accumulated micro-batches cross the network once: FSDP2 defers its reduce-scatter to the last one.

    Counted from FSDP2's own profiler ranges (``post_backward_reduce``, one per unit and reduction):
    the count is the same for 3 and for 6 micro-batches, where without the deferral every
    micro-batch's backward reduce-scatters every unit. (On the last micro-batch each block reduces
    twice, once per forward call: global and local crops; see docs/training.md.)
    """
    shard = functools.partial(shard_network, mesh=cpu_mesh, param_dtype=None, reduce_dtype=None)

    def reductions(sizes: tuple[int, ...]) -> int:
        state = build_train_state(recipe(), global_batch_size=6, seed=0, shard=shard)
        state.step = 150
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            train_step(state, micro_batches(batch, sizes))
        return sum(1 for e in prof.events() if "FSDP::post_backward_reduce" in e.name)

    state = build_train_state(recipe(), global_batch_size=6, seed=0, shard=shard)
    units = sum(1 for m in state.student.modules() if type(m).__name__.startswith("FSDP"))
    three, six = reductions((2, 2, 2)), reductions((1,) * 6)
    assert three == six < 3 * units


def _held_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the tensors an object keeps (through attributes, lists and dataclass fields)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, list | tuple):
        return sum(_held_bytes(x, seen) for x in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        return sum(_held_bytes(v, seen) for v in vars(obj).values())
    return 0


def test_teacher_targets_are_held_as_embeddings_and_built_per_micro_batch() -> None:
    """Across the step the teacher keeps head embeddings, not N x K targets (gigabytes at 512 px).

    Each micro-batch's targets are built when consumed: rows are distributions over K prototypes.
    """
    from radforge.trainer.step import _teacher_targets

    k, b = 4096, 16
    cfg = recipe(f"heads.num_prototypes={k}", "model.img_size=64", "crops.global_size=64")
    state = build_train_state(cfg, global_batch_size=2 * b, seed=0)
    gen = torch.Generator().manual_seed(0)
    micro = [
        ViewBatch(
            global_crops=torch.randn(2 * b, 1, 64, 64, generator=gen),
            local_crops=torch.randn(0, 1, 24, 24),
            masks=torch.rand(2 * b, 64, generator=gen) < 0.5,
            n_global=2,
            n_local=0,
        )
        for _ in range(2)
    ]
    with torch.no_grad():
        targets = _teacher_targets(state, micro, state.schedules.at(150))
    rows = sum(mb.n_global * mb.batch_size + int(mb.masks.sum()) for mb in micro)
    assert rows > 1000
    assert _held_bytes(targets) < rows * k * 4 / 8  # the targets themselves: rows x K floats
    for j, mb in enumerate(micro):
        dino, ibot = targets.dino(j), targets.ibot(j)
        assert dino.shape == (mb.n_global, mb.batch_size, k) and ibot.shape == (int(mb.masks.sum()), k)
        torch.testing.assert_close(dino.sum(-1), torch.ones(mb.n_global, mb.batch_size))
        torch.testing.assert_close(ibot.sum(-1), torch.ones(len(ibot)))
