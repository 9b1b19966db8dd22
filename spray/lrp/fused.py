"""Element-wise steps of the rules: in place by default, or as single fused kernels through ``torch.compile``.

The rules' backward passes are a few convolution products plus a chain of element-wise steps (a division
by a stabilised denominator, a choice by the sign of ``z``, a scaling). Each step here has two forms: the
eager one (the default) writes every step in place into one output buffer, one pass over a layer-sized
tensor per step and no fresh allocation per step; the functional one is what ``torch.compile`` (inductor)
fuses into one loop when ``SPRAY_LRP_COMPILE=1`` is set or :func:`enable_compile` is called. Compiling costs
tens of seconds once per process (less with inductor's on-disk cache) and measures barely faster than the
in-place steps on CPU (docs/benchmarks.md), so it is off by default. Shapes are compiled dynamically, so
layers of every size share one kernel. Where compiling fails (no C++ compiler, an unsupported platform) the
eager form is used from then on, with one warning; the numbers are the same either way up to float
rounding (fused multiply-adds) and the sign given to a negative zero (``spray.lrp.ops.stabilize``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

_state = {"enabled": os.environ.get("SPRAY_LRP_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")}


def enable_compile(enabled: bool = True) -> None:
    """Switch compiled element-wise kernels on or off for this process (default: ``SPRAY_LRP_COMPILE``)."""
    _state["enabled"] = bool(enabled)


def compile_enabled() -> bool:
    return _state["enabled"]


class Fused:
    """``fn`` run compiled when compiling is enabled and works, else ``eager``: the same numbers (up to
    float rounding) computed step by step, each step written in place where it can be (one pass over the
    tensor and no fresh allocation per step). ``fn`` stays functional, which is what the compiler fuses."""

    def __init__(self, fn: Callable[..., Any], eager: Callable[..., Any] | None = None) -> None:
        self.fn = fn
        self.eager = eager or fn
        self._compiled: Callable[..., Any] | None = None
        self._failed = False
        self._lock = threading.Lock()
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any) -> Any:
        if not _state["enabled"] or self._failed:
            return self.eager(*args)
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args)
        except Exception as error:  # inductor raises many kinds: missing compiler, lowering, platform
            self._failed = True
            log.warning("torch.compile of %s failed (%s: %s); using the eager version", self.fn.__name__,
                        type(error).__name__, error)
            return self.eager(*args)


def _stabilize(z: Tensor, epsilon: float) -> Tensor:
    return z + torch.where(z >= 0, epsilon, -epsilon).to(z.dtype)


def memory_format_of(t: Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D tensor whose channels are its innermost dimension (also a view of one,
    such as one half of a stack), else ``contiguous_format``."""
    if t.ndim == 4 and t.shape[1] > 1 and t.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


class _Scratch(threading.local):
    """Per-thread scratch memory for the stacked quotients on CPU: one flat buffer per dtype, grown to the
    largest stack asked for. The stack of a layer is read only by that layer's transposed product, and the
    backward pass of a CPU graph runs its nodes one after another on the calling thread, so one buffer
    serves every layer. A fresh tensor of that size would be new memory from the operating system on
    every layer (glibc maps allocations above 32 MB afresh), whose first touch costs a page fault per
    4 KB page (docs/benchmarks.md). The buffer is released after each call (:func:`release_scratch`) but
    its size remembered: the next call allocates the largest size at once instead of growing layer by
    layer (a backward pass meets the largest stacks last), each growth new memory to fault in."""

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, Tensor] = {}
        self.sizes: dict[torch.dtype, int] = {}

    def take(self, shape: list[int], dtype: torch.dtype, memory_format: torch.memory_format) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        flat = self.buffers.get(dtype)
        if flat is None or flat.numel() < numel:
            size = self.sizes[dtype] = max(numel, self.sizes.get(dtype, 0))
            flat = self.buffers[dtype] = torch.empty(size, dtype=dtype)
        if memory_format == torch.channels_last:
            batch, channels, height, width = shape
            return flat[:numel].view(batch, height, width, channels).permute(0, 3, 1, 2)
        return flat[:numel].view(shape)

    def release(self) -> None:
        self.buffers.clear()


_scratch = _Scratch()


def release_scratch() -> None:
    """Free this thread's scratch memory (:class:`_Scratch`); the next backward pass allocates it again."""
    _scratch.release()


def _stacked_empty(like: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """An uninitialised tensor like ``like`` (and in its memory format) with twice its size along ``dim``,
    and its two halves (views). On CPU a view of this thread's scratch memory, valid until the next
    call: the caller hands it to one transposed product and drops it."""
    shape = list(like.shape)
    shape[dim] *= 2
    memory_format = memory_format_of(like)
    if like.device.type == "cpu":
        stack = _scratch.take(shape, like.dtype, memory_format)
    else:
        stack = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)
    first, second = stack.chunk(2, dim=dim)
    return stack, first, second


def _epsilon_quotient_in_place(relevance: Tensor, z: Tensor, epsilon: float) -> Tensor:
    # z + eps sign(z) in two passes (spray.lrp.ops.stabilize: a negative zero is shifted down, which
    # changes nothing, since such an output's numerators are all zero)
    denominator = torch.copysign(z.new_tensor(epsilon), z).add_(z)
    if denominator.shape != relevance.shape or denominator.dtype != relevance.dtype:
        return relevance / denominator  # broadcast or promoted: not writable in place
    return torch.div(relevance, denominator, out=denominator)


def _epsilon_quotient(relevance: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``R / (z + eps sign(z))`` with ``sign(0) = 1``."""
    return relevance / _stabilize(z, epsilon)


epsilon_quotient = Fused(_epsilon_quotient, _epsilon_quotient_in_place)


def _rectified_quotient_in_place(relevance: Tensor, rectified: Tensor, epsilon: float) -> Tensor:
    denominator = torch.add(rectified, epsilon)
    if denominator.shape != relevance.shape or denominator.dtype != relevance.dtype:
        return relevance / denominator  # broadcast or promoted: not writable in place
    return torch.div(relevance, denominator, out=denominator)


def _rectified_quotient(relevance: Tensor, rectified: Tensor, epsilon: float) -> Tensor:
    """``R / (r + eps)`` for ``r = relu(z)``: the epsilon quotient wherever ``z > 0``, and 0 wherever ``R`` is 0
    (which the callers guarantee for ``z <= 0``); one pass fewer than :func:`epsilon_quotient`."""
    return relevance / (rectified + epsilon)


rectified_quotient = Fused(_rectified_quotient, _rectified_quotient_in_place)


def _gamma_quotients(z: Tensor, shifted: Tensor, relevance: Tensor, gamma: float, dim: int) -> Tensor:
    """The backward argument of the gamma rule for non-negative inputs (see ``Gamma``): ``[s sign(z), s]``
    stacked along ``dim``, ``s = R / (sign(z) (shifted + leaky_relu(z, -(1 + gamma))))`` with
    ``shifted = gamma q + eps`` (``s = 0`` where ``z = 0``)."""
    sign = torch.sign(z)
    s = relevance / ((shifted + F.leaky_relu(z, -(1.0 + gamma))) / sign)
    return torch.cat([s * sign, s], dim=dim)


def _gamma_quotients_in_place(z: Tensor, shifted: Tensor, relevance: Tensor, gamma: float, dim: int) -> Tensor:
    """:func:`_gamma_quotients` in six passes written into the stacked result; ``shifted`` is overwritten."""
    stacked, signed, plain = _stacked_empty(z, dim)
    torch.sign(z, out=signed)
    torch.ops.aten.leaky_relu.out(z, -(1.0 + gamma), out=plain)
    shifted.add_(plain).div_(signed)  # sign(z) D: +-inf where z = 0
    torch.div(relevance, shifted, out=plain)
    signed.mul_(plain)
    return stacked


gamma_quotients = Fused(_gamma_quotients, _gamma_quotients_in_place)


def _alpha_beta_quotients(z: Tensor, shifted_pos: Tensor, relevance: Tensor, epsilon: float, dim: int) -> Tensor:
    """``[R / shifted_pos, R / min(z - shifted_pos, -eps)]`` stacked along ``dim``, with ``shifted_pos``
    the positive denominator ``z+ + eps`` (see ``AlphaBeta``)."""
    return torch.cat([relevance / shifted_pos, relevance / (z - shifted_pos).clamp(max=-epsilon)], dim=dim)


def _alpha_beta_quotients_in_place(z: Tensor, shifted_pos: Tensor, relevance: Tensor, epsilon: float,
                                   dim: int) -> Tensor:
    stacked, s_pos, s_neg = _stacked_empty(z, dim)
    torch.div(relevance, shifted_pos, out=s_pos)
    torch.sub(z, shifted_pos, out=s_neg).clamp_(max=-epsilon)
    torch.div(relevance, s_neg, out=s_neg)
    return stacked


alpha_beta_quotients = Fused(_alpha_beta_quotients, _alpha_beta_quotients_in_place)
