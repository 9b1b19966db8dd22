"""Element-wise steps of the rules as single fused kernels, through ``torch.compile`` when enabled.

The rules' backward passes are a few convolution products plus a chain of element-wise steps (a division
by a stabilised denominator, a choice by the sign of ``z``, a scaling). In eager mode each step is one pass
over a tensor the size of the layer's output; on CPU those passes cost about as much as the products.
``torch.compile`` (inductor) fuses each chain into one loop. Compiling costs tens of seconds once per process
(less with inductor's on-disk cache), so it is off by default and meant for large audits:
``SPRAY_LRP_COMPILE=1`` in the environment, or :func:`enable_compile`. Shapes are compiled dynamically, so
layers of every size share one kernel. Where compiling fails (no C++ compiler, an unsupported platform) the
eager function is used from then on, with one warning; the numbers are the same either way up to float
rounding (fused multiply-adds).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

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
    """``fn`` run compiled when compiling is enabled and works, else eagerly."""

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn
        self._compiled: Callable[..., object] | None = None
        self._failed = False
        self._lock = threading.Lock()
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        if not _state["enabled"] or self._failed:
            return self.fn(*args)
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args)
        except Exception as error:  # inductor raises many kinds: missing compiler, lowering, platform
            self._failed = True
            log.warning("torch.compile of %s failed (%s: %s); using the eager version", self.fn.__name__,
                        type(error).__name__, error)
            return self.fn(*args)


def _stabilize(z: Tensor, epsilon: float) -> Tensor:
    return z + torch.where(z >= 0, epsilon, -epsilon).to(z.dtype)


@Fused
def epsilon_quotient(relevance: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``R / (z + eps sign(z))`` with ``sign(0) = 1``."""
    return relevance / _stabilize(z, epsilon)


@Fused
def gamma_quotients(z: Tensor, shifted: Tensor, relevance: Tensor, gamma: float, dim: int) -> Tensor:
    """The backward argument of the gamma rule for non-negative inputs (see ``Gamma``): ``[s sign(z), s]``
    stacked along ``dim``, ``s = R / (sign(z) (shifted + leaky_relu(z, -(1 + gamma))))`` with
    ``shifted = gamma q + eps`` (``s = 0`` where ``z = 0``)."""
    sign = torch.sign(z)
    s = relevance / ((shifted + F.leaky_relu(z, -(1.0 + gamma))) / sign)
    return torch.cat([s * sign, s], dim=dim)


@Fused
def alpha_beta_quotients(z: Tensor, z_pos: Tensor, relevance: Tensor, alpha: float, beta: float,
                         epsilon: float, dim: int) -> Tensor:
    """``[alpha R / (z+ + eps), -beta R / (min(z - z+, 0) - eps)]`` stacked along ``dim``."""
    s_pos = relevance * alpha / (z_pos + epsilon)
    s_neg = relevance * -beta / ((z - z_pos).clamp(max=0) - epsilon)
    return torch.cat([s_pos, s_neg], dim=dim)
