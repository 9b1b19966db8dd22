"""LRP rules: how relevance passes one layer.

Notation (the seed's table): ``a_j`` input activation, ``w_jk`` weight, ``z_k = sum_j a_j w_jk + b_k``
the layer's output, ``R_k`` the relevance of output ``k``. A rule for a linear layer (Conv1d/2d/3d,
Linear) maps ``R (shape of z)`` to ``R_in (shape of a)``; the numbers follow zennit 0.5.1, including its
stabiliser (``z + eps * sign(z)``, ``sign(0) = 1``), its treatment of negative inputs (the generalised
z+, gamma and alpha-beta rules split inputs into ``a+``/``a-`` and pair them with ``w+``/``w-``) and of
biases (the positive part of the bias joins the positive denominator, the negative part the negative one).

Cost: each rule is evaluated in the backward pass of one autograd graph. When the layer's input is
non-negative (after a ReLU, the common case) the ``a-`` terms vanish exactly and are skipped, so z+ costs
one extra forward product of the layer and gamma/alpha-beta one extra forward product plus one extra
transposed product. Where a ReLU follows the layer and relevance is zero wherever its output is zero
(``spray.lrp.graph``), gamma costs one extra forward product only (``Gamma.rectified_relevance``).

Other rules: :class:`Pass` (element-wise activations: relevance unchanged), :class:`Norm` (average
pooling and sums: proportional to each input's contribution), :class:`Gradient` (max pooling, reshapes,
concatenation: the ordinary gradient, which routes relevance unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor

from spray.lrp.fused import (
    alpha_beta_quotients,
    epsilon_quotient,
    gamma_quotients,
    memory_format_of,
    rectified_quotient,
)
from spray.lrp.ops import LinearLayer, safe_divide, stabilize

Bound = Union[float, Sequence[float], Tensor]  # noqa: UP007 (a runtime alias: the | form needs Python 3.10 types)


class Rule:
    """Base class: a rule has a short ``name`` (used in metadata) and its parameters."""

    name = "rule"

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        params = ", ".join(f"{key}={value}" for key, value in self.params().items())
        return f"{self.name}({params})" if params else self.name

    def __repr__(self) -> str:
        return self.describe()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted((k, str(v)) for k, v in self.params().items()))))


class _Stabilized:
    """Mixin for rules whose only parameter is the small constant that keeps their denominators off zero."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def params(self) -> dict[str, Any]:
        return {"stabilizer": self.stabilizer}


class LinearRule(Rule):
    """A rule for Conv/Linear layers.

    ``relevance(layer, a, z, R)``: ``a`` the layer input ``(B, C_in, ...)`` (or only its shape when
    ``needs_input`` is false), ``z`` the layer output ``(B, C_out, ...)`` when ``needs_output`` is true
    (else None), ``R`` the output relevance like ``z``; returns the input relevance like ``a``.
    """

    needs_input = True
    needs_output = False

    def forward(self, layer: LinearLayer, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """The layer's output ``z`` and the tensor the backward pass gets as ``z`` (by default the
        output itself when ``needs_output``, else None). A rule may compute more in the same call."""
        z = layer.forward(a, layer.weight, layer.bias)
        return z, (z if self.needs_output else None)

    # Whether the rule gives the same relevance when handed ``relu(z)`` for ``z`` and an output relevance that
    # is zero wherever ``z <= 0`` (spray.lrp.ops.LinearRelevance): the graph builder then lets the layer apply
    # the ReLU after it itself. True for rules whose denominators stay non-zero there, so that 0 / d = 0.
    rectifies = False

    def keeps_output(self, layer: LinearLayer) -> bool:
        """Whether :meth:`forward` may hand its output ``z`` itself to the backward pass (then nothing may
        overwrite ``z`` in place)."""
        return self.needs_output

    def forward_rectified(self, layer: LinearLayer, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """As :meth:`forward`, for a layer that applies the ReLU after it itself: ``relu(z)``, and the tensor
        for the backward pass (``relu(z)`` itself where :meth:`keeps_output`, else None)."""
        rectified = layer.forward_relu(a, layer.weight, layer.bias)
        return rectified, (rectified if self.keeps_output(layer) else None)

    def relevance(self, layer: LinearLayer, a: Any, z: Tensor | None, relevance: Tensor) -> Tensor:
        raise NotImplementedError

    def rectified_relevance(self, layer: LinearLayer, a: Any, z: Tensor | None, relevance: Tensor) -> Tensor:
        """The input relevance when :meth:`forward_rectified` made ``z`` (``relu(z)`` or None) and
        ``relevance`` is zero wherever ``z <= 0``; by default :meth:`relevance` on the rectified ``z``."""
        return self.relevance(layer, a, z, relevance)


def _positive(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


def _has_negative(layer: LinearLayer, a: Tensor) -> bool:
    """Whether the layer input has negative entries. The graph builder marks layers whose input is
    non-negative by construction (after a ReLU, a pooling of ReLU outputs, ...): no pass over ``a``."""
    if layer.input_nonnegative:
        return False
    return bool(a.numel()) and bool(a.amin() < 0)


def _shifted_bias(bias: Tensor | None, shift: float, like: Tensor) -> Tensor:
    """``bias + shift`` (a zero bias if there is none), to fold a stabiliser into a conv/linear call."""
    if bias is None:
        channels = like.shape[0]
        return torch.full((channels,), shift, dtype=like.dtype, device=like.device)
    return bias + shift


class Epsilon(LinearRule):
    """LRP-epsilon: ``R_j = sum_k a_j w_jk / (z_k + eps sign(z_k)) R_k`` (bias in ``z_k``)."""

    name = "epsilon"
    needs_output = True
    rectifies = True

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def relevance(self, layer, a, z, relevance):
        s = epsilon_quotient(relevance, z, self.epsilon)
        return layer.backward(s, a, layer.weight).mul_(a)

    def rectified_relevance(self, layer, a, z, relevance):
        # z = relu(z) >= 0: the stabilised denominator is z + eps (sign(0) = +1, as zennit)
        s = rectified_quotient(relevance, z, self.epsilon)
        return layer.backward(s, a, layer.weight).mul_(a)


class Zero(LinearRule):
    """LRP-0: ``R_j = sum_k a_j w_jk / z_k R_k``; outputs with ``z_k = 0`` pass no relevance."""

    name = "zero"
    needs_output = True
    rectifies = True

    def relevance(self, layer, a, z, relevance):
        return a * layer.backward(safe_divide(relevance, z), a, layer.weight)


class ZPlus(_Stabilized, LinearRule):
    """z+ (alpha=1, beta=0): ``R_j = sum_k (a_j^+ w_jk^+ + a_j^- w_jk^-) / z_k^+ R_k``.

    ``z_k^+ = sum_j a_j^+ w_jk^+ + a_j^- w_jk^- + b_k^+``, stabilised.
    """

    name = "zplus"

    def relevance(self, layer, a, z, relevance):
        w_pos, w_neg, _ = layer.split_weight()
        b_pos = _positive(layer.bias)
        if not _has_negative(layer, a):
            # a >= 0, w+ >= 0, b+ >= 0: z+ >= 0, so stabilize(z+) = z+ + eps, folded into the bias.
            denominator = layer.forward(a, w_pos, _shifted_bias(b_pos, self.stabilizer, w_pos))
            s = torch.div(relevance, denominator, out=denominator)
            return layer.backward(s, a, w_pos).mul_(a)
        a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
        z_pos = layer.forward(a_pos, w_pos, b_pos) + layer.forward(a_neg, w_neg, None)
        s = relevance / stabilize(z_pos, self.stabilizer)
        return a_pos * layer.backward(s, a, w_pos) + a_neg * layer.backward(s, a, w_neg)


class AlphaBeta(LinearRule):
    """alpha-beta: ``R_j = sum_k (alpha (a_j w_jk)^+ / z_k^+ - beta (a_j w_jk)^- / z_k^-) R_k``.

    ``alpha - beta = 1``. Positive contributions are ``a^+ w^+`` and ``a^- w^-`` (plus ``b^+``), negative
    ones ``a^+ w^-`` and ``a^- w^+`` (plus ``b^-``).
    """

    name = "alpha_beta"
    rectifies = True  # z- - eps = min(relu(z) - (z+ + eps), -eps) <= -eps also where z <= 0

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got alpha={alpha}, beta={beta}")
        if abs((alpha - beta) - 1.0) > 1e-12:
            raise ValueError(f"alpha - beta must equal 1, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "stabilizer": self.stabilizer}

    def _splits(self, layer: LinearLayer) -> bool:
        # One product with [w+; w-] stacked on the output channels: not for grouped convs, whose
        # output channels are tied to input groups.
        return layer.input_nonnegative and self.beta != 0 and (not layer.is_conv or layer.groups == 1)

    def forward(self, layer, a):
        """The ordinary product ``z``, kept for the backward pass when the input is known to be >= 0.
        There ``z+ + eps`` comes from one product with cached weights ``w+`` and bias ``b+ + eps``, and
        ``z- = z - z+`` from the two: one extra forward product as with two separate denominators, but
        only ``z`` held from the forward to the backward pass. ``z`` is the ordinary product (not
        ``z+ + z-``, whose float32 rounding error grows with ``|z+|`` rather than with the mixed-sign
        partial sums of ``z``).

        Not under autocast: in bf16/fp16 ``z - z+`` cancels to noise where ``|z-|`` is small against ``z+``;
        there both denominators are computed in the backward pass from their own products, in float32."""
        z = layer.forward(a, layer.weight, layer.bias)
        shared = self.keeps_output(layer) and not torch.is_autocast_enabled(a.device.type)
        return z, (z if shared else None)

    def forward_rectified(self, layer, a):
        rectified = layer.forward_relu(a, layer.weight, layer.bias)
        shared = self.keeps_output(layer) and not torch.is_autocast_enabled(a.device.type)
        return rectified, (rectified if shared else None)

    def keeps_output(self, layer: LinearLayer) -> bool:
        # z is kept for inputs of either sign: those of both signs (a first layer) use it alike
        # (_mixed_signs_stacked)
        return self.beta != 0 and layer.can_stack

    def _shared_quotients(self, layer: LinearLayer, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        """``[R / (z+ + eps), R / (z- - eps)]`` stacked on the channels, from ``z`` and one product giving
        ``z+ + eps`` (alpha and -beta are folded into the stacked weights of the transposed product).

        ``z- - eps = min(z - (z+ + eps), -eps)``: the clamp keeps rounding noise where ``z- = 0`` exactly
        from giving the denominator the wrong sign; the numerators ``a w-`` of such outputs are all zero,
        so they pass nothing either way. ``z - z+`` carries an absolute error of float32 rounding times
        ``|z+|``, which matters only for outputs whose ``|z-|`` is within a few roundings of zero against
        ``z+``; on ResNets with measured BatchNorm statistics the relevance is as close to the float64
        reference as the separate-product path's (tests/lrp/test_precision.py)."""
        def build() -> tuple[Tensor, Tensor]:
            return layer.split_weight()[0], _shifted_bias(_positive(layer.bias), self.stabilizer, layer.weight)
        weight_pos, bias_pos = layer.derived(("alpha_beta_pos", self.stabilizer), build)
        shifted_pos = layer.forward(a, weight_pos, bias_pos)
        return alpha_beta_quotients(z, shifted_pos, relevance, self.stabilizer, layer.channel_dim)

    def _stacked_weights(self, layer: LinearLayer) -> Tensor:
        """``[alpha w+; -beta w-]`` for the transposed product of the stacked quotients."""
        alpha, beta = self.alpha, self.beta
        return layer.derived(("alpha_beta_back", alpha, beta), lambda: torch.cat(
            [layer.split_weight()[0] * alpha, layer.split_weight()[1] * -beta]))

    def relevance(self, layer, a, z, relevance):
        w_pos, w_neg, _ = layer.split_weight()
        b_pos, b_neg = _positive(layer.bias), _negative(layer.bias)
        if z is not None and self._splits(layer):
            s = self._shared_quotients(layer, a, z, relevance)
            return layer.backward(s, a, self._stacked_weights(layer)).mul_(a)
        if not _has_negative(layer, a):
            # a >= 0: z+ = a w+ + b+ >= 0 and z- = a w- + b- <= 0, so the stabilised denominators are
            # z+ + eps and z- - eps, the eps folded into the bias. z- is computed from its own product,
            # exact also where z- is small against z+. (zennit shifts an exactly zero z- by
            # +eps rather than -eps; its numerators are then all zero, so the result is the same.)
            pos_denominator = layer.forward(a, w_pos, _shifted_bias(b_pos, self.stabilizer, w_pos))
            s_pos = torch.div(relevance * self.alpha, pos_denominator, out=pos_denominator)
            if not self.beta:
                return layer.backward(s_pos, a, w_pos).mul_(a)
            neg_denominator = layer.forward(a, w_neg, _shifted_bias(b_neg, -self.stabilizer, w_neg))
            s_neg = torch.div(relevance * -self.beta, neg_denominator, out=neg_denominator)
            return layer.backward_pair(s_pos, s_neg, a).mul_(a)
        a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
        if layer.can_stack:
            return self._mixed_signs_stacked(layer, a_pos, a_neg, relevance, z)
        z_pos = layer.forward(a_pos, w_pos, b_pos) + layer.forward(a_neg, w_neg, None)
        z_neg = layer.forward(a_pos, w_neg, b_neg) + layer.forward(a_neg, w_pos, None)
        s_pos = relevance / stabilize(z_pos, self.stabilizer)
        s_neg = relevance / stabilize(z_neg, self.stabilizer)
        positive = a_pos * layer.backward(s_pos, a, w_pos) + a_neg * layer.backward(s_pos, a, w_neg)
        negative = a_pos * layer.backward(s_neg, a, w_neg) + a_neg * layer.backward(s_neg, a, w_pos)
        return self.alpha * positive - self.beta * negative

    def _mixed_signs_stacked(self, layer: LinearLayer, a_pos: Tensor, a_neg: Tensor, relevance: Tensor,
                             z: Tensor | None = None) -> Tensor:
        """Inputs of both signs (e.g. a first layer on normalised images) with one forward and one
        transposed product instead of four each. With the layer's output ``z`` (kept by :meth:`forward`)
        the forward product is ``z+ + eps``, of ``[a+, a-]`` (stacked on the input channels) with
        ``[w+, w-]`` and bias ``b+ + eps``, and ``z- - eps = min(z - (z+ + eps), -eps)`` as for inputs
        >= 0 (:meth:`_shared_quotients`); without it (under autocast) ``[z+; z-]`` is one product with
        ``[[w+, w-]; [w-, w+]]`` and bias ``[b+; b-]``, twice the output channels. The transposed product
        of ``[s+; s-]`` with ``[[alpha w+, alpha w-]; [-beta w-, -beta w+]]`` gives the factors of ``a+``
        and ``a-``."""
        dim = 1 if layer.is_conv else -1
        alpha, beta = self.alpha, self.beta
        inputs = torch.cat([a_pos, a_neg], dim=dim)
        if z is not None:
            def build_pos() -> tuple[Tensor, Tensor]:
                w_pos, w_neg, _ = layer.split_weight()
                return (torch.cat([w_pos, w_neg], dim=1),
                        _shifted_bias(_positive(layer.bias), self.stabilizer, layer.weight))

            weight_pos, bias_pos = layer.derived(("alpha_beta_mixed_pos", self.stabilizer), build_pos)
            shifted_pos = layer.forward(inputs, weight_pos, bias_pos)
            quotients = alpha_beta_quotients(z, shifted_pos, relevance, self.stabilizer, dim)
            del shifted_pos
        else:
            quotients = self._mixed_quotients(layer, inputs, relevance)
        back = layer.derived(("alpha_beta_mixed_back", alpha, beta), lambda: torch.cat([
            torch.cat([layer.split_weight()[0], layer.split_weight()[1]], dim=1) * alpha,
            torch.cat([layer.split_weight()[1], layer.split_weight()[0]], dim=1) * -beta]))
        for_pos, for_neg = layer.backward(quotients, inputs, back).chunk(2, dim=dim)
        return (for_pos * a_pos).add_(for_neg * a_neg)

    def _mixed_quotients(self, layer: LinearLayer, inputs: Tensor, relevance: Tensor) -> Tensor:
        """``[R / stabilize(z+); R / stabilize(z-)]`` from one product of ``[a+, a-]`` with twice the
        output channels (see :meth:`_mixed_signs_stacked`)."""
        dim = 1 if layer.is_conv else -1

        def build() -> tuple[Tensor, Tensor | None]:
            w_pos, w_neg, _ = layer.split_weight()
            forward = torch.cat([torch.cat([w_pos, w_neg], dim=1), torch.cat([w_neg, w_pos], dim=1)])
            bias = None if layer.bias is None else torch.cat([layer.bias.clamp(min=0), layer.bias.clamp(max=0)])
            return forward, bias

        forward, bias = layer.derived("alpha_beta_mixed", build)
        quotients = layer.forward(inputs, forward, bias)  # [z+; z-], overwritten with [s+; s-]
        quotients.add_(torch.copysign(quotients.new_tensor(self.stabilizer), quotients))  # stabilize()
        for half in quotients.chunk(2, dim=dim):
            torch.div(relevance, half, out=half)
        return quotients


class Gamma(LinearRule):
    """Generalised LRP-gamma (zennit 0.5.1): favour positive contributions by ``gamma``.

    For outputs with ``z_k > 0``: weights ``w + gamma w^+`` on ``a^+`` and ``w + gamma w^-`` on ``a^-``
    (bias ``b + gamma b^+``); for ``z_k < 0`` the mirror image (bias ``b + gamma b^-``); ``z_k = 0`` passes
    nothing. Equals the original gamma rule for non-negative inputs.
    """

    name = "gamma"
    needs_output = True
    rectifies = True

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        if gamma < 0 or stabilizer < 0:
            raise ValueError(f"gamma and stabilizer must be non-negative, got gamma={gamma}, stabilizer={stabilizer}")
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "stabilizer": self.stabilizer}

    def forward_rectified(self, layer, a):
        """``z`` (rectified by the caller); kept for the backward pass only where the input may be negative:
        for an input >= 0 by construction :meth:`rectified_relevance` needs nothing of it."""
        rectified = layer.forward_relu(a, layer.weight, layer.bias)
        return rectified, (None if layer.input_nonnegative else rectified)

    def rectified_relevance(self, layer, a, z, relevance):
        """With ``relevance`` zero wherever ``z <= 0`` only outputs with ``z > 0`` pass relevance, all with the
        weights ``w + g w+`` (for ``a >= 0``) and the denominator ``z + g q + eps``, ``q = a w+ + b+``: one
        product with the cached ``w + g w+`` and bias ``b + g b+ + eps`` (as zennit forms it) and one
        transposed product with the same weights, half the channels of :meth:`_nonnegative_input`'s."""
        if z is not None:  # an input of either sign: the general path on relu(z), exact where z > 0
            return self.relevance(layer, a, z, relevance)
        g = self.gamma
        eps = max(self.stabilizer, torch.finfo(relevance.dtype).tiny)
        weight, bias = layer.derived(("gamma_rectified", g, eps), lambda: (
            layer.weight + g * layer.split_weight()[0],
            _shifted_bias(None if layer.bias is None else layer.bias + g * layer.bias.clamp(min=0), eps,
                          layer.weight)))
        denominator = layer.forward(a, weight, bias)
        # >= eps wherever z > 0; elsewhere the relevance is 0 and the clamp keeps 0 / d from being 0 / 0
        denominator.clamp_(min=eps)
        s = torch.div(relevance, denominator, out=denominator)
        return layer.backward(s, a, weight).mul_(a)

    def relevance(self, layer, a, z, relevance):
        g = self.gamma
        w_pos, w_neg, _ = layer.split_weight()
        bias = layer.bias
        if not _has_negative(layer, a):
            return self._nonnegative_input(layer, a, z, relevance)
        up = (z > 0).to(relevance.dtype) * relevance
        down = (z < 0).to(relevance.dtype) * relevance
        a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
        w_up, w_down = layer.weight + g * w_pos, layer.weight + g * w_neg
        b_up = None if bias is None else bias + g * bias.clamp(min=0)
        b_down = None if bias is None else bias + g * bias.clamp(max=0)
        z_up = layer.forward(a_pos, w_up, b_up) + layer.forward(a_neg, w_down, None)
        z_down = layer.forward(a_pos, w_down, b_down) + layer.forward(a_neg, w_up, None)
        s_up = up / stabilize(z_up, self.stabilizer)
        s_down = down / stabilize(z_down, self.stabilizer)
        return (
            a_pos * (layer.backward(s_up, a, w_up) + layer.backward(s_down, a, w_down))
            + a_neg * (layer.backward(s_up, a, w_down) + layer.backward(s_down, a, w_up))
        )

    def _nonnegative_input(self, layer: LinearLayer, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        """The same numbers for ``a >= 0`` with one extra forward and one (stacked) transposed product.

        With ``q = a w+ + b+ >= 0`` and ``Q = g q + eps`` (one product with the scaled weights and bias):
        the stabilised denominator is ``z + Q`` where ``z > 0`` and ``(1 + g) z - Q`` where ``z < 0``, i.e.
        ``sign(z) D`` with ``D = Q + leaky_relu(z, -(1 + g)) >= eps``; dividing ``D`` by ``sign(z)`` gives
        infinity where ``z = 0``, so those outputs pass nothing. With ``s = R / (sign(z) D)`` the backward
        products ``(w + g w+) s_up + (w + g w-) s_down`` regroup (``s`` is 0 where ``z = 0``) as
        ``(1 + g/2) w s + (g/2) |w| (s sign(z))``: one transposed product of ``[s sign(z), s]`` with the
        stacked ``[(g/2) |w|; (1 + g/2) w]``, and every element-wise step in place.
        """
        g = self.gamma
        # A zero stabiliser is replaced by the smallest normal float: D stays > 0, so z = 0 still gives 0.
        eps = max(self.stabilizer, torch.finfo(z.dtype).tiny)
        weight_q, bias_q = layer.derived(("gamma_q", g, eps), lambda: (
            layer.split_weight()[0] * g, _shifted_bias(_scaled(_positive(layer.bias), g), eps, layer.weight)))
        shifted = layer.forward(a, weight_q, bias_q)  # g q + eps, a fresh tensor: overwritten below
        back = layer.derived(("gamma_back", g), lambda: torch.cat(
            [layer.weight.abs() * (g / 2), layer.weight * (1 + g / 2)]))
        stacked = gamma_quotients(z, shifted, relevance, g, layer.channel_dim)
        del shifted  # not needed by the transposed product: lowers the peak memory
        if layer.can_stack:
            return layer.backward(stacked, a, back).mul_(a)
        half = layer.weight.shape[0]
        signed, plain = stacked.chunk(2, dim=layer.channel_dim)
        dense = memory_format_of(stacked)
        return (layer.backward(signed.contiguous(memory_format=dense), a, back[:half])
                .add_(layer.backward(plain.contiguous(memory_format=dense), a, back[half:])).mul_(a))


def _scaled(t: Tensor | None, factor: float) -> Tensor | None:
    return None if t is None else t * factor


class Flat(_Stabilized, LinearRule):
    """flat: every input in a neuron's receptive field gets an equal share, ``R_j = sum_k R_k / n_k``.

    ``n_k`` counts the inputs that reach output ``k`` (padding excluded), as zennit computes it: the layer
    applied to ones with unit weights and no bias.
    """

    name = "flat"
    needs_input = False

    def relevance(self, layer, a, z, relevance):
        shape = tuple(a)
        if (layer.is_conv and layer.groups == 1) or not layer.is_conv:
            # All weights are 1, so every output channel has the same count n_k and the transposed
            # product sums over output channels: one channel does the work of all of them.
            ones_w = layer.weight.new_ones((1, *layer.weight.shape[1:]))
            counts = layer.forward(relevance.new_ones((1, *shape[1:])), ones_w, None)  # (1, 1, ...) or (1, 1)
            s = (relevance / stabilize(counts, self.stabilizer)).sum(1 if layer.is_conv else -1, keepdim=True)
            if not layer.is_conv:
                return s.expand(shape).contiguous()
            return layer.backward(s, shape, ones_w)
        ones_w = torch.ones_like(layer.weight)
        s = relevance / stabilize(layer.forward(relevance.new_ones(shape), ones_w, None), self.stabilizer)
        return layer.backward(s, shape, ones_w)


class WSquare(_Stabilized, LinearRule):
    """w^2: ``R_j = sum_k w_jk^2 / sum_j' w_j'k^2 R_k`` (first layer on unbounded inputs).

    As in zennit 0.5.1 the squared bias joins the denominator.
    """

    name = "wsquare"
    needs_input = False

    def relevance(self, layer, a, z, relevance):
        shape = tuple(a)
        w2 = layer.weight**2
        b2 = None if layer.bias is None else layer.bias**2
        s = relevance / stabilize(layer.forward(relevance.new_ones(shape), w2, b2), self.stabilizer)
        return layer.backward(s, shape, w2)


class ZBox(LinearRule):
    """z^B: ``R_j = sum_k (a_j w_jk - l_j w_jk^+ - h_j w_jk^-) / z^B_k R_k`` for inputs in ``[l, h]``.

    ``low``/``high``: a float or one value per channel (broadcast over ``(1, C, 1, ...)``).
    """

    name = "zbox"
    needs_output = True
    rectifies = True  # z - (l w+ + h w-) is stabilised away from 0 wherever z is rectified

    def __init__(self, low: Bound, high: Bound, stabilizer: float = 1e-6) -> None:
        self.low, self.high = _bound(low, "low"), _bound(high, "high")
        self.stabilizer = float(stabilizer)

    def params(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "stabilizer": self.stabilizer}

    def relevance(self, layer, a, z, relevance):
        low = _expand_bound(self.low, a)
        high = _expand_bound(self.high, a)
        w_pos, w_neg, _ = layer.split_weight()
        s = epsilon_quotient(relevance, z - self._bound_products(layer, a), self.stabilizer)
        if not layer.can_stack:
            return (
                a * layer.backward(s, a, layer.weight)
                - low * layer.backward(s, a, w_pos)
                - high * layer.backward(s, a, w_neg)
            )
        # One transposed product with [w, w+, w-] stacked on the input channels.
        dim = 1 if layer.is_conv else -1
        stacked = layer.derived("zbox_back", lambda: torch.cat([layer.weight, w_pos, w_neg], dim=1))
        shape = list(a.shape)
        shape[dim] *= 3
        for_a, for_low, for_high = layer.backward(s, shape, stacked).chunk(3, dim=dim)
        return (for_a * a).sub_(for_low * low).sub_(for_high * high)

    def _bound_products(self, layer: LinearLayer, a: Tensor) -> Tensor:
        """``low w+ + b+ + high w- + b-`` for one sample shaped like ``a[:1]``: the same for every input of
        that shape, so it is computed once per shape and broadcast over the batch. (Biases included as
        zennit does: ``b - b+ - b- = 0``, so they cancel in the denominator ``z - this``.)"""
        shape = tuple(a.shape[1:])
        cached = layer.derived("zbox_bounds", dict)
        products = cached.get(shape)
        if products is None:
            one = a[:1]
            w_pos, w_neg, _ = layer.split_weight()
            products = (layer.forward(_expand_bound(self.low, one), w_pos, _positive(layer.bias))
                        + layer.forward(_expand_bound(self.high, one), w_neg, _negative(layer.bias)))
            cached.clear()  # one input shape at a time (an audit resizes every image alike)
            cached[shape] = products
        return products


def _bound(value: Bound, name: str) -> Tensor:
    if value is None:
        raise ValueError(f"the z^B rule needs input bounds: give {name}= (a float or one value per channel)")
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if tensor.ndim > 1:
        tensor = tensor.reshape(-1) if tensor.numel() == tensor.shape[1] else tensor
    return tensor


def _expand_bound(bound: Tensor, like: Tensor) -> Tensor:
    bound = bound.to(device=like.device, dtype=like.dtype)
    if bound.ndim == 0:
        return bound.expand(like.shape)
    if bound.ndim == 1:
        if like.ndim < 2 or bound.numel() not in (1, like.shape[1]):
            raise ValueError(
                f"z^B bounds have {bound.numel()} values, the input has {like.shape[1] if like.ndim > 1 else 1} "
                "channel(s): give one value or one per channel"
            )
        bound = bound.view(1, -1, *([1] * (like.ndim - 2)))
    return bound.expand(like.shape)


class Pass(Rule):
    """Pass-through for element-wise activations: the relevance of the output is the input's relevance."""

    name = "pass"


class Norm(_Stabilized, Rule):
    """Proportional split for parameter-free linear maps (average pooling, sums of branches, means):
    ``R_j = a_j * d/da_j [f(a) . R / stabilize(f(a))]``, i.e. each input gets its share of the output."""

    name = "norm"


class Gradient(Rule):
    """The ordinary gradient: used for max pooling (winner takes all), reshapes, concatenation and
    dropout in eval mode, all of which route relevance without changing its sum."""

    name = "gradient"


# Rule names as used in user-defined composites (config) and in ``LRP.rules``.
RULES: dict[str, type[Rule]] = {
    "zero": Zero,
    "epsilon": Epsilon,
    "gamma": Gamma,
    "alpha_beta": AlphaBeta,
    "zplus": ZPlus,
    "flat": Flat,
    "wsquare": WSquare,
    "zbox": ZBox,
    "pass": Pass,
    "norm": Norm,
    "gradient": Gradient,
}


def make_rule(name: str, **params: Any) -> Rule:
    """Build a rule by name, e.g. ``make_rule("gamma", gamma=0.5)``; raises ValueError for unknown names."""
    try:
        cls = RULES[name]
    except KeyError:
        raise ValueError(f"unknown LRP rule {name!r}; expected one of {', '.join(RULES)}") from None
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"rule {name!r}: {error}") from None
