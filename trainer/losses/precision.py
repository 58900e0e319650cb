"""Losses compute in fp32, whatever autocast region the train step runs them in.

Under bf16 autocast (the GPU recipe) an einsum or a matmul inside a loss would run in bf16: DINO's
cross-entropy over crop pairs, KoLeo's neighbour search, SigReg's projections. Their inputs (head
outputs, CLS tokens) may be bf16; the maths on them must not be (DINOv2 and DINOv3 compute losses
in fp32). :func:`fp32_forward` wraps a module's ``forward``: autocast off, floating-point tensor
arguments cast to fp32; gradients flow back to the bf16 tensors unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _fp32(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def fp32_forward(forward: F) -> F:
    """``forward`` with autocast disabled on its tensors' device and float arguments in fp32."""

    @functools.wraps(forward)
    def wrapped(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        device = next(
            (a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), torch.device("cpu")
        )
        with torch.autocast(device.type, enabled=False):
            return forward(self, *map(_fp32, args), **{k: _fp32(v) for k, v in kwargs.items()})

    return wrapped  # type: ignore[return-value]
