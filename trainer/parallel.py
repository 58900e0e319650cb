"""Data parallelism around a :class:`~radforge.trainer.heads.Network`: replicated, FSDP2, per-block compile.

Replicated (small models): every rank holds the whole model; :class:`GradientReducer` averages
gradients across ranks in ~25 MB buckets, all-reduced asynchronously while the last micro-batch's
backward is still running (DDP's reducer, without its module wrapper: the step calls the backbone's
and heads' methods directly). Sharded ones defer
their reduce-scatter to the last micro-batch the same way (:func:`fsdp_gradient_sync`).

FSDP2 (large and giant), DINOv3's layout (RECIPE.md, "FSDP"): ``fully_shard`` on every
transformer block, then on the backbone and heads, with bf16 parameters for compute and fp32
gradient reduction (the sharded master weights stay fp32); activation checkpointing is a backbone
option (``checkpoint_blocks``); ``torch.compile`` per block keeps compile time flat in depth.
Sharding happens on the meta device, before weights exist; call ``to_empty`` and ``init_weights``
after it. The training loop builds the device mesh. Checked on CPU with gloo (2 processes): FSDP2,
its reduce-scatter and DCP checkpoints all work there, so the sharded path is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from radforge.trainer.heads import Network

GRADIENT_BUCKET_MB = 25.0  # DDP's default bucket size: large enough to amortise a collective's latency


def gradient_buckets(params: Sequence[torch.Tensor], *, bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Parameters grouped into buckets of at most ``bucket_bytes`` (a larger parameter alone), last first.

    Reverse registration order, as DDP: the backward pass produces the last layers' gradients first,
    so the first buckets fill (and their all-reduce starts) while earlier layers are still running.
    """
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for p in reversed(params):
        nbytes = p.numel() * p.element_size()
        if not buckets or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


class GradientReducer:
    """Average gradients over ranks in buckets, overlapped with the backward pass (the replicated path).

    Each bucket's gradients are flattened into one buffer and all-reduced asynchronously as soon as
    the bucket is complete and every bucket before it has been launched; launching in bucket order
    keeps the sequence of collectives the same on every rank whatever order autograd fires the
    hooks in. At the end of the backward pass (an autograd callback) the rest are launched, every
    reduction is waited for and the averaged buffers are copied back into the gradients. A
    parameter that got no gradient on a rank counts as zero there (DDP's unused parameters).
    Calling the reducer with ``False`` switches it off for the backward passes of all micro-batches
    but the last (DDP's ``no_sync``): accumulated gradients cross the network once per step.
    """

    def __init__(
        self, module: torch.nn.Module, *, world_size: int, bucket_mb: float = GRADIENT_BUCKET_MB
    ) -> None:
        params = list(dict.fromkeys(p for p in module.parameters() if p.requires_grad))
        self.buckets = gradient_buckets(params, bucket_bytes=max(1, int(bucket_mb * 2**20)))
        self.world_size = world_size
        self.enabled = True
        self.launched_in_backward = 0  # buckets whose all-reduce started before the backward pass ended
        self.launched = 0
        self._bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        self._reset()
        for p in params:
            p.register_post_accumulate_grad_hook(self._ready)

    def __call__(self, on: bool) -> None:
        self.enabled = on

    def _reset(self) -> None:
        self._ready_count = [0] * len(self.buckets)
        self._next = 0  # the next bucket to launch
        self._works: list[tuple[int, torch.Tensor, Any]] = []
        self._queued = False

    def _ready(self, p: torch.Tensor) -> None:
        if not self.enabled:
            return
        if not self._queued:  # first gradient of this backward pass: finish when autograd is done
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._queued = True
        self._ready_count[self._bucket_of[id(p)]] += 1
        while self._next < len(self.buckets) and self._ready_count[self._next] == len(
            self.buckets[self._next]
        ):
            self._launch(self._next, in_backward=True)

    def _launch(self, b: int, *, in_backward: bool) -> None:
        bucket = self.buckets[b]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
        ).div_(self.world_size)
        self._works.append((b, flat, dist.all_reduce(flat, async_op=True)))
        self._next = b + 1
        self.launched += 1
        self.launched_in_backward += int(in_backward)

    def _finish(self) -> None:
        while self._next < len(self.buckets):
            self._launch(self._next, in_backward=False)
        for b, flat, work in self._works:
            work.wait()
            offset = 0
            for p in self.buckets[b]:
                n = p.numel()
                value = flat[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = value.clone()
                else:
                    p.grad.copy_(value)
                offset += n
        self._reset()


def replicate_gradients(module: torch.nn.Module, *, world_size: int) -> GradientReducer:
    """The replicated path's gradient averaging: a :class:`GradientReducer` (the step's ``grad_sync``)."""
    return GradientReducer(module, world_size=world_size)


def fsdp_gradient_sync(network: torch.nn.Module) -> Callable[[bool], None]:
    """The on/off switch of an FSDP2-sharded network's gradient reduce-scatter (the step's ``grad_sync``).

    Off for every micro-batch's backward but the last: gradients accumulate unsharded on each rank
    and cross the network once per step (FSDP1's ``no_sync``), at the cost of holding one unsharded
    gradient per parameter until then.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in network.modules() if isinstance(m, FSDPModule)]

    def switch(on: bool) -> None:
        for unit in units:
            unit.set_requires_gradient_sync(on, recurse=False)

    return switch


@torch.no_grad()
def scatter_full_state(network: torch.nn.Module, full: dict[str, torch.Tensor] | None) -> None:
    """Load whole (unsharded) tensors held by rank 0 into a sharded (or plain) network on every rank.

    ``full`` is the state dict on rank 0 (ignored elsewhere). Each tensor is broadcast, then each
    rank keeps its shard. Written out because ``set_model_state_dict(full_state_dict=True)`` drops
    the keys of a shared module (the iBOT head that is the DINO head).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    group = dist.is_available() and dist.is_initialized()
    rank0 = not group or dist.get_rank() == 0
    for name, target in [*network.named_parameters(), *network.named_buffers()]:
        if rank0:
            assert full is not None
            if name not in full:
                raise KeyError(f"missing key {name!r} in the state dict")
            whole = full[name].to(device=target.device, dtype=target.dtype)
        else:
            whole = torch.empty(target.shape, dtype=target.dtype, device=target.device)
        if group:
            dist.broadcast(whole, src=0)
        if isinstance(target, DTensor):
            local = distribute_tensor(whole, target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(local.to_local())
        else:
            target.copy_(whole)


def fsdp_state_dicts(student: Network, teacher: Network, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Sharded state dicts (DTensors) of student, teacher and optimizer, as DCP saves and loads them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    student_sd, optim_sd = get_state_dict(student, optimizer)
    return {"student": student_sd, "teacher": get_model_state_dict(teacher), "optimizer": optim_sd}


def load_fsdp_state_dicts(
    student: Network, teacher: Network, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
) -> None:
    """Put state dicts shaped like :func:`fsdp_state_dicts`'s (filled by DCP) back into the modules."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    set_state_dict(student, optimizer, model_state_dict=saved["student"], optim_state_dict=saved["optimizer"])
    set_model_state_dict(teacher, saved["teacher"])


def shard_network(
    network: Network,
    *,
    mesh: DeviceMesh | None = None,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
) -> Network:
    """Apply FSDP2 in place: one unit per block, one for the rest of the backbone, one per head.

    ``param_dtype`` is the compute dtype of gathered parameters (the sharded master copy keeps its
    own dtype, fp32); ``reduce_dtype`` the dtype of gradient reduce-scatter.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": policy,
        "reshard_after_forward": reshard_after_forward,
    }
    for block in network.backbone.blocks:
        fully_shard(block, **kwargs)
    fully_shard(network.backbone, **kwargs)
    register_fsdp_forward_method(network.backbone, "forward_features")  # the step calls it, not forward
    heads = [network.dino_head] if network.shared_head else [network.dino_head, network.ibot_head]
    for head in heads:
        fully_shard(head, **kwargs)
        # the teacher's targets are built from this (radforge.trainer.step), not from forward
        register_fsdp_forward_method(head, "embed_and_prototypes")
    return network


def compile_blocks(network: Network, **compile_kwargs: Any) -> Network:
    """``torch.compile`` each transformer block's ``forward`` in place (keywords go to ``torch.compile``).

    Only ``forward`` is compiled, not the module's call: hooks registered on the block (FSDP2's
    all-gather before and reshard after, activation checkpointing's wrapper) run eagerly around the
    compiled graph, as with DINOv3's order (compile the blocks, then ``fully_shard`` them), and the
    state dict keeps its keys (a ``torch.compile(block)`` wrapper would prefix them). Call it before
    :func:`shard_network`; compilation itself happens on the first call, so a network still on the
    meta device may be passed.

    Inductor's comprehensive padding is switched off first: with it, torch 2.11's inductor pads the
    fused SwiGLU matmul of ViT-L (5,472 output columns to 5,504) and then fails its own stride
    assertion in the backward (seen on an H200; ``bench/gpu_check.py --phases profile`` compiles
    ViT-L through this function and is the check).
    """
    import torch._inductor.config as inductor_config

    inductor_config.comprehensive_padding = False
    for block in network.backbone.blocks:
        block.forward = torch.compile(block.forward, **compile_kwargs)  # type: ignore[method-assign]
    return network


def compile_heads(network: Network, objective: Any, **compile_kwargs: Any) -> None:
    """``torch.compile`` the network's heads and the DINO/iBOT losses in place.

    On a GPU the step's eager remainder after compiled blocks is mostly elementwise work over
    ``tokens x prototypes`` logits: the heads' normalisations, the fp32 casts, log-softmax and the
    products with the teacher's targets. Compiling fuses it. Shapes are dynamic (the number of
    masked patches changes every batch), so they are compiled with ``dynamic=True``: one graph, no
    recompilation per batch. ``objective`` is the step's :class:`~radforge.trainer.step.Objective`.
    """
    heads = [network.dino_head] if network.shared_head else [network.dino_head, network.ibot_head]
    for module in [*heads, objective.dino, objective.ibot]:
        module.compile(dynamic=True, **compile_kwargs)
