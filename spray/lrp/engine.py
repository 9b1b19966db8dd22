"""The LRP entry point used by the audit pipeline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from spray.lrp.composites import Composite, resolve_composite
from spray.lrp.fused import release_scratch
from spray.lrp.graph import build_lrp_graph
from spray.lrp.ops import outputs_kept
from spray.lrp.rules import Bound

# Largest float32 error of the channels-last format that spray accepts, as a fraction of max|R| against a
# float64 reference: the order of zennit's own float32 error on a ResNet-18 at 224x224 (4.6e-4, docs/lrp.md),
# so channels-last stays as close to exact as the field's reference implementation. tests/lrp/test_precision.py.
CHANNELS_LAST_TOLERANCE = 1e-3

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class LRP:
    """Layer-wise Relevance Propagation of a classifier's target logit.

    ``LRP(model, composite, epsilon, gamma, alpha, low, high)`` prepares a private copy of ``model``
    (eval mode, BatchNorm folded, parameters frozen, every layer checked and given its rule); the
    caller's model is never modified. ``low``/``high`` are the z^B input bounds, a float or one value per
    channel, required by ``epsilon_gamma_box``. ``composite`` is a name from
    :data:`spray.lrp.COMPOSITES` or a :class:`~spray.lrp.composites.Composite`.

    Extra keyword options: ``stabilizer`` (the small constant of the non-epsilon denominators, 1e-6 as in
    zennit) and ``autocast`` (``None``, ``"bf16"`` or ``"fp16"``: run the forward pass under
    ``torch.autocast`` on the input's device, meant for CUDA; the layers' outputs are handed on in
    float32 and every rule computes in float32, so relevance is accumulated in float32). With
    ``SPRAY_LRP_COMPILE=1`` in the environment the rules' element-wise steps run as kernels compiled by
    ``torch.compile`` (:mod:`spray.lrp.fused`). ``channels_last`` (``"auto"``, ``True`` or ``False``): the
    memory format of nets with 2-D convolutions. ``"auto"`` (the default) runs them channels-last on CPU,
    where oneDNN's products are faster, and NCHW on other devices (not measured there); ``True``
    channels-last on every device; ``False`` NCHW. Channels-last rounds differently: within
    :data:`CHANNELS_LAST_TOLERANCE` x max|R| of a float64 reference (docs/lrp.md). The relevance
    returned is NCHW either way.

    ``logits, relevance = lrp(x, targets)``: ``x (B, C, H, W)`` float on any device (the engine moves
    itself there), ``targets (B,)`` long. ``logits (B, K)`` detached; ``relevance`` like ``x``, float32
    (float64 when the model's parameters are float64: such a model is explained in float64 throughout,
    which gives a reference for the float32 numbers):
    the relevance of logit ``targets[b]``, seeded with the logit's own value, so under conservation
    ``relevance[b].sum() ~= logits[b, targets[b]]``. After each call ``lrp.conservation`` holds
    ``relevance[b].sum() / logits[b, targets[b]]`` per sample (B,), a cheap check of the model graph.

    ``lrp.composite_name`` and ``lrp.rules`` (``{layer name: rule name}``) describe what was applied.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite = "epsilon_plus_flat",
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        alpha: float = 2.0,
        low: Bound | None = None,
        high: Bound | None = None,
        *,
        stabilizer: float = 1e-6,
        autocast: str | None = None,
        channels_last: bool | Literal["auto"] = "auto",
    ) -> None:
        resolved = resolve_composite(
            composite, epsilon=epsilon, gamma=gamma, alpha=alpha, low=low, high=high, stabilizer=stabilizer
        )
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
        self.composite_name: str = resolved.name
        self.parameters: dict[str, Any] = {
            "epsilon": epsilon, "gamma": gamma, "alpha": alpha, "stabilizer": stabilizer,
            "low": _plain(low), "high": _plain(high), "autocast": autocast,
        }
        self.autocast = autocast
        self._module, self.rules = build_lrp_graph(model, resolved)
        self.dtype = _explaining_dtype(self._module)
        self._device = torch.device("cpu")
        self._lock = threading.Lock()
        self.conservation: Tensor | None = None
        self.channels_last: bool | Literal["auto"] = channels_last
        self._has_conv2d = any(isinstance(m, nn.Conv2d) for m in self._module.modules())
        self._place(self._device)

    def memory_format(self, device: torch.device) -> torch.memory_format:
        """The memory format the net runs in on ``device``: ``torch.channels_last`` for a net with 2-D
        convolutions where ``channels_last`` asks for it (``"auto"``: on CPU), else ``torch.contiguous_format``."""
        wanted = self.channels_last is True or (self.channels_last == "auto" and device.type == "cpu")
        return torch.channels_last if wanted and self._has_conv2d else torch.contiguous_format

    def _to(self, device: torch.device) -> None:
        if device != self._device:
            with self._lock:
                if device != self._device:
                    self._place(device)
                    self._device = device

    def _place(self, device: torch.device) -> None:
        # torch's type stubs omit Module.to's memory_format keyword.
        cast(Any, self._module).to(device, memory_format=self.memory_format(device))

    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError(f"x must be a tensor (B, C, ...), got {getattr(x, 'shape', type(x).__name__)}")
        targets = torch.as_tensor(targets, device=x.device).long().reshape(-1)
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets has {targets.shape[0]} entries for a batch of {x.shape[0]}")
        self._to(x.device)
        memory_format = self.memory_format(x.device) if x.ndim == 4 else torch.contiguous_format
        inputs = x.detach().to(self.dtype).contiguous(memory_format=memory_format).requires_grad_(True)
        with torch.enable_grad():
            if self.autocast is not None:
                with torch.autocast(x.device.type, dtype=AUTOCAST_DTYPES[self.autocast]):
                    output = self._module(inputs)
            else:
                output = self._module(inputs)
            if output.ndim != 2:
                raise ValueError(f"the model must return logits (B, K), got shape {tuple(output.shape)}")
            if int(targets.min()) < 0 or int(targets.max()) >= output.shape[1]:
                raise ValueError(f"targets must lie in [0, {output.shape[1]}), got {targets.tolist()}")
            explained = output.gather(1, targets[:, None]).detach()
            seed = torch.zeros_like(output).scatter_(1, targets[:, None], explained)
            try:
                (relevance,) = torch.autograd.grad(output, inputs, seed)
            finally:
                release_scratch()  # held only during the backward pass, not between calls
        logits = output.detach().to(self.dtype)
        relevance = relevance.detach().to(self.dtype).contiguous()
        self.conservation = conservation(relevance, logits, targets)
        return logits, relevance

    def at_layer(self, x: Tensor, layer: str, relevance: Callable[[Tensor], Tensor] | None = None
                 ) -> tuple[Tensor, Tensor | None]:
        """The output of the layer named ``layer`` (a leaf module's name in ``model.named_modules()``) for
        ``x``, detached, ``(B, ...)``; and with ``relevance``, a function of that output returning the
        relevance to start from (same shape), the input relevance (like ``x``) that this engine's rules give
        from that layer down: the layer's output relevance seeds the backward pass there instead of at the
        logit. Raises ValueError when the layer is not called by the model's forward pass."""
        self._to(x.device)
        module = dict(self._module.named_modules()).get(layer)
        if module is None or not layer:
            raise ValueError(f"the model has no layer named {layer!r}")
        captured: list[Tensor] = []
        caller = threading.get_ident()

        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            # the engine is shared by a process's task threads: keep this call's output, not another thread's
            if threading.get_ident() == caller:
                captured.append(output)

        handle = module.register_forward_hook(keep)
        memory_format = self.memory_format(x.device) if x.ndim == 4 else torch.contiguous_format
        inputs = x.detach().to(self.dtype).contiguous(memory_format=memory_format)
        inputs.requires_grad_(relevance is not None)
        try:
            with torch.set_grad_enabled(relevance is not None), outputs_kept():
                self._module(inputs)
        finally:
            handle.remove()
        if not captured or not isinstance(captured[0], Tensor):
            raise ValueError(f"layer {layer!r} is not called with a tensor output by the model's forward pass")
        output = captured[0]
        plain = output.detach().contiguous()  # NCHW for the caller, whatever format the net runs in
        if relevance is None:
            return plain, None
        seed = relevance(plain).to(output.dtype)
        try:
            (explained,) = torch.autograd.grad(output, inputs, seed)
        finally:
            release_scratch()
        return plain, explained.detach().to(self.dtype).contiguous()

    def __getstate__(self) -> dict[str, Any]:  # picklable for Dask workers: the lock is per process
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LRP(composite={self.composite_name!r}, layers={len(self.rules)})"


def conservation(relevance: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``sum(relevance[b]) / logits[b, targets[b]]`` (B,): 1 under exact conservation.

    Biases absorb relevance, so values a little below 1 are normal; values far from 1 (or of the wrong
    sign) point at a layer the engine does not explain faithfully.
    """
    explained = logits.gather(1, targets.reshape(-1, 1).to(logits.device)).reshape(-1)
    total = relevance.reshape(relevance.shape[0], -1).sum(1)
    return total / torch.where(explained == 0, torch.ones_like(explained), explained)


def _explaining_dtype(module: nn.Module) -> torch.dtype:
    """float64 for a model whose floating-point parameters are all float64, else float32."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    return torch.float64 if dtypes == {torch.float64} else torch.float32


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [float(v) for v in value]
    return value
