"""Other attribution methods behind the LRP interface (SpRAY clusters any heatmap).

Every attributor is called like :class:`~spray.lrp.LRP`: ``logits, relevance = attributor(x, targets)``
with ``x (B, C, H, W)``, ``targets (B,)`` long, ``logits (B, K)`` detached, ``relevance`` float32 like
``x``; it has ``method``, ``composite_name`` (None except for LRP), ``rules`` ({} except for LRP) and,
after each call, ``conservation`` (``sum(relevance[b]) / logits[b, targets[b]]``; only meaningful for
LRP, gradient x input and integrated gradients, whose maps sum to about the logit).

Methods: ``lrp``; ``gradient`` (d logit / d x); ``gradient_x_input``; ``smoothgrad`` (mean gradient over
noisy copies, noise std = ``noise`` x the input's value range per sample); ``integrated_gradients``
(Riemann midpoint sum over ``steps`` points from ``baseline`` to x, times x - baseline); ``occlusion``
(logit drop when a ``patch`` x ``patch`` square, moved by ``stride``, is set to ``baseline``; each pixel
gets the mean drop of the patches covering it, spread over channels).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from spray.lrp.engine import LRP, conservation

METHODS: tuple[str, ...] = (
    "lrp", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "occlusion",
)


class _Attributor:
    method = "attributor"
    composite_name: str | None = None

    def __init__(self, model: nn.Module) -> None:
        self._model = copy.deepcopy(model).eval()
        for param in self._model.parameters():
            param.requires_grad_(False)
        self._device = torch.device("cpu")
        self.rules: dict[str, str] = {}
        self.conservation: Tensor | None = None

    def _prepare(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if x.device != self._device:
            self._model.to(x.device)
            self._device = x.device
        targets = torch.as_tensor(targets, device=x.device).long().reshape(-1)
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets has {targets.shape[0]} entries for a batch of {x.shape[0]}")
        return x.detach().to(torch.float32), targets

    def _gradient(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, K) and d logit[b, targets[b]] / d x (B, ...)."""
        inputs = x.detach().requires_grad_(True)
        with torch.enable_grad():
            output = self._model(inputs)
            (grad,) = torch.autograd.grad(output.gather(1, targets[:, None]).sum(), inputs)
        return output.detach(), grad

    def _finish(self, logits: Tensor, relevance: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits, relevance = logits.float(), relevance.detach().float()
        self.conservation = conservation(relevance, logits, targets)
        return logits, relevance

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gradient(_Attributor):
    method = "gradient"

    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        x, targets = self._prepare(x, targets)
        logits, grad = self._gradient(x, targets)
        return self._finish(logits, grad, targets)


class GradientXInput(_Attributor):
    method = "gradient_x_input"

    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        x, targets = self._prepare(x, targets)
        logits, grad = self._gradient(x, targets)
        return self._finish(logits, grad * x, targets)


class SmoothGrad(_Attributor):
    method = "smoothgrad"

    def __init__(self, model: nn.Module, samples: int = 16, noise: float = 0.1, seed: int = 0) -> None:
        super().__init__(model)
        if samples < 1 or noise < 0:
            raise ValueError(f"smoothgrad needs samples >= 1 and noise >= 0, got {samples}, {noise}")
        self.samples, self.noise, self.seed = samples, noise, seed

    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        x, targets = self._prepare(x, targets)
        logits = self._model(x).detach()
        flat = x.reshape(x.shape[0], -1)
        scale = (flat.amax(1) - flat.amin(1)).view(-1, *([1] * (x.ndim - 1))) * self.noise
        generator = torch.Generator(device=x.device).manual_seed(self.seed)  # same noise for same input
        total = torch.zeros_like(x)
        for _ in range(self.samples):
            noisy = x + scale * torch.randn(x.shape, generator=generator, device=x.device)
            total += self._gradient(noisy, targets)[1]
        return self._finish(logits, total / self.samples, targets)


class IntegratedGradients(_Attributor):
    method = "integrated_gradients"

    def __init__(self, model: nn.Module, steps: int = 16, baseline: float = 0.0) -> None:
        super().__init__(model)
        if steps < 1:
            raise ValueError(f"integrated_gradients needs steps >= 1, got {steps}")
        self.steps, self.baseline = steps, float(baseline)

    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        x, targets = self._prepare(x, targets)
        logits = self._model(x).detach()
        baseline = torch.full_like(x, self.baseline)
        total = torch.zeros_like(x)
        for step in range(self.steps):
            alpha = (step + 0.5) / self.steps  # midpoint rule
            total += self._gradient(baseline + alpha * (x - baseline), targets)[1]
        return self._finish(logits, (x - baseline) * total / self.steps, targets)


class Occlusion(_Attributor):
    method = "occlusion"

    def __init__(self, model: nn.Module, patch: int = 4, stride: int | None = None, baseline: float = 0.0) -> None:
        super().__init__(model)
        self.patch, self.stride, self.baseline = int(patch), int(stride or patch), float(baseline)
        if self.patch < 1 or self.stride < 1:
            raise ValueError(f"occlusion needs patch >= 1 and stride >= 1, got {patch}, {stride}")

    @torch.no_grad()
    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        x, targets = self._prepare(x, targets)
        if x.ndim != 4:
            raise ValueError(f"occlusion needs images (B, C, H, W), got {tuple(x.shape)}")
        logits = self._model(x)
        reference = logits.gather(1, targets[:, None]).squeeze(1)
        height, width = x.shape[2:]
        drop = torch.zeros(x.shape[0], 1, height, width, device=x.device)
        count = torch.zeros(1, 1, height, width, device=x.device)
        rows = range(0, max(height - self.patch, 0) + 1, self.stride)
        cols = range(0, max(width - self.patch, 0) + 1, self.stride)
        for top in rows:
            for left in cols:
                occluded = x.clone()
                occluded[:, :, top:top + self.patch, left:left + self.patch] = self.baseline
                score = self._model(occluded).gather(1, targets[:, None]).squeeze(1)
                drop[:, :, top:top + self.patch, left:left + self.patch] += (reference - score).view(-1, 1, 1, 1)
                count[:, :, top:top + self.patch, left:left + self.patch] += 1
        relevance = (drop / count.clamp(min=1)).expand_as(x) / x.shape[1]
        return self._finish(logits, relevance.contiguous(), targets)


def attributor(method: str, model: nn.Module, **params: Any):
    """An attributor for ``method`` (one of :data:`METHODS`) with its parameters.

    ``lrp`` takes :class:`~spray.lrp.LRP`'s parameters (``composite``, ``epsilon``, ``gamma``, ``alpha``,
    ``low``, ``high``, ``stabilizer``, ``autocast``, ``channels_last``); ``smoothgrad`` ``samples``, ``noise``, ``seed``;
    ``integrated_gradients`` ``steps``, ``baseline``; ``occlusion`` ``patch``, ``stride``, ``baseline``.
    """
    if method == "lrp":
        lrp = LRP(model, **params)
        lrp.method = "lrp"  # type: ignore[attr-defined]
        return lrp
    classes = {
        "gradient": Gradient, "gradient_x_input": GradientXInput, "smoothgrad": SmoothGrad,
        "integrated_gradients": IntegratedGradients, "occlusion": Occlusion,
    }
    if method not in classes:
        raise ValueError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        return classes[method](model, **params)
    except TypeError as error:
        raise ValueError(f"attribution method {method!r}: {error}") from None


def attributor_from_config(model: nn.Module, attribution: Any, low: Any = None, high: Any = None):
    """The attributor an ``AttributionConfig`` describes; ``low``/``high`` are the z^B bounds the caller
    derived (config values or the normalised [0, 1] pixel range). ``attribution.rules`` (a user-defined
    composite) is matched before the named ``attribution.composite``."""
    method = attribution.method
    if method == "lrp":
        lrp_params = dict(
            epsilon=attribution.epsilon, gamma=attribution.gamma, alpha=attribution.alpha,
            low=low, high=high, stabilizer=attribution.stabilizer,
        )
        composite: Any = attribution.composite
        if attribution.rules:
            from spray.lrp.composites import custom_composite

            entries = [rule.entry() for rule in attribution.rules]  # spray.config.CompositeRule
            composite = custom_composite(
                entries, base=attribution.composite, name=f"custom+{attribution.composite}", **lrp_params
            )
        return attributor("lrp", model, composite=composite, autocast=attribution.autocast,
                          channels_last=attribution.channels_last, **lrp_params)
    if method == "smoothgrad":
        return attributor(method, model, samples=attribution.samples, noise=attribution.noise)
    if method == "integrated_gradients":
        return attributor(method, model, steps=attribution.steps, baseline=attribution.baseline)
    if method == "occlusion":
        return attributor(method, model, patch=attribution.patch, stride=attribution.stride, baseline=attribution.baseline)
    return attributor(method, model)
