"""GPU-scale wrappers around a :class:`trainer.heads.Network`: FSDP2 sharding and per-block compile.

DINOv3's layout (RECIPE.md, "FSDP"): ``fully_shard`` on every transformer block, then on the
backbone and heads, with bf16 parameters for compute and fp32 gradient reduction; activation
checkpointing is a backbone option (``checkpoint_blocks``); ``torch.compile`` per block keeps
compile time flat in depth. Sharding happens on the meta device, before weights exist; call
``to_empty`` and ``init_weights`` after it. Issue 5's Ray Train loop builds the device mesh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from trainer.heads import Network


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
    fully_shard(network.dino_head, **kwargs)
    if not network.shared_head:
        fully_shard(network.ibot_head, **kwargs)
    return network


def compile_blocks(network: Network, **compile_kwargs: Any) -> Network:
    """``torch.compile`` each transformer block in place (``compile_kwargs`` go to ``torch.compile``)."""
    for block in network.backbone.blocks:
        block.compile(**compile_kwargs)
    return network
