"""Data parallelism around a :class:`~radforge.trainer.heads.Network`: replicated, FSDP2, per-block compile.

Replicated (small models): every rank holds the whole model; :func:`replicate_gradients` averages
each gradient across ranks as the last micro-batch's backward produces it. Sharded ones defer
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

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from radforge.trainer.heads import Network


def replicate_gradients(module: torch.nn.Module, *, world_size: int) -> Callable[[bool], None]:
    """Average each gradient over ranks as soon as it is ready; returns the on/off switch.

    The step turns averaging off for every micro-batch's backward but the last (like DDP's
    ``no_sync``), so accumulated gradients cross the network once per step.
    """
    enabled = [True]

    def hook(p: torch.Tensor) -> None:
        if enabled[0]:
            assert p.grad is not None
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)

    for p in module.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook)

    def switch(on: bool) -> None:
        enabled[0] = on

    return switch


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
    """``torch.compile`` each transformer block in place (``compile_kwargs`` go to ``torch.compile``).

    Inductor's comprehensive padding is switched off first: with it, torch 2.11's inductor pads the
    fused SwiGLU matmul of ViT-L (5,472 output columns to 5,504) and then fails its own stride
    assertion in the backward (seen on an H200; ``bench/gpu_check.py --phases profile`` compiles
    ViT-L through this function and is the check).
    """
    import torch._inductor.config as inductor_config

    inductor_config.comprehensive_padding = False
    for block in network.backbone.blocks:
        block.compile(**compile_kwargs)
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
