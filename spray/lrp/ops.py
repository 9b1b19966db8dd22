"""Low-level pieces of the engine: the stabiliser, linear-layer products, and the autograd functions.

LRP is run as one ordinary forward pass followed by one *modified* backward pass: every layer that has
a rule is wrapped in a custom :class:`torch.autograd.Function` whose forward is the layer's normal
forward and whose backward maps the relevance of its output to the relevance of its input with the
rule. The "gradient" that autograd hands from layer to layer is therefore the relevance itself, and
the gradient of the model input is the input relevance. Layers without a rule (max pooling, reshapes,
concatenation, dropout in eval mode) keep their ordinary gradient, which routes relevance unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spray.lrp.fused import epsilon_quotient, rectified_quotient

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = CONV_TYPES + (nn.Linear,)
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1``: the denominator of the epsilon rule.

    Same convention as zennit's ``Stabilizer`` (zero entries are shifted up), so the numbers agree. The sign
    is taken with ``copysign`` (one pass, where ``torch.where`` on a comparison takes several), which shifts a
    negative zero down instead of up; an output is ``-0.0`` only when every term of its sum is a (signed)
    zero, so its numerators are zero and what it passes is zero either way.
    """
    return torch.copysign(z.new_tensor(epsilon), z).add_(z)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is exactly 0 (the LRP-0 rule)."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(numerator), numerator / torch.where(zero, 1.0, denominator))


class LinearLayer:
    """A Conv1d/2d/3d or Linear layer seen as a linear map with exchangeable weight and bias.

    ``forward(x, weight, bias)`` computes ``z = x * weight + bias`` with the layer's geometry (stride,
    padding, dilation, groups) and ``backward(s, input_shape, weight)`` the vector-Jacobian product
    ``s * weight^T`` with respect to the input, which is all an LRP rule needs: every rule of the seed is
    ``R_in = sum_k modifier(a)_j * rho(w)_jk * R_k / z'_k`` for some modified weight ``rho(w)``.

    Shapes: conv ``x (B, C_in, *spatial)``, ``z (B, C_out, *spatial_out)``; linear ``x (..., F_in)``.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, LINEAR_TYPES):
            raise TypeError(f"expected one of {LINEAR_TYPES}, got {type(module).__name__}")
        layer: Any = module  # torch types module attributes as Tensor | Module
        self.weight: Tensor = layer.weight
        self.bias: Tensor | None = layer.bias
        # Set by the graph builder when the input is non-negative by construction (after a ReLU).
        self.input_nonnegative = False
        self._derived: dict[Hashable, tuple[tuple[Any, ...], Any]] = {}
        self.is_conv = isinstance(module, CONV_TYPES)
        if self.is_conv:
            self.ndim = self.weight.ndim - 2
            self.stride: tuple[int, ...] = tuple(layer.stride)
            self.dilation: tuple[int, ...] = tuple(layer.dilation)
            self.groups: int = layer.groups
            self.padding = _explicit_padding(layer)

    @property
    def can_stack(self) -> bool:
        """Whether weights may be stacked on the output channels (not for grouped convs, whose output
        channels are tied to input groups)."""
        return not self.is_conv or self.groups == 1

    def derived(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()`` (tensors made from the weight and bias, e.g. ``w+`` or a scaled stack), cached under
        ``key``: clamping or scaling all weights on every call costs as much as an element-wise pass over a
        large activation. Rebuilt when the weight or bias moves to another device or dtype or is modified
        in place (their version counters)."""
        stamp = (self.weight.device, self.weight.dtype, self.weight._version,
                 None if self.bias is None else self.bias._version)
        hit = self._derived.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = build()
        self._derived[key] = (stamp, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for Dask workers: the cached weight-derived tensors are rebuilt there on first use.
        state = dict(self.__dict__)
        state["_derived"] = {}
        return state

    @property
    def channel_dim(self) -> int:
        """The output-channel dimension of ``z``: 1 for conv ``(B, C, ...)``, -1 for linear ``(..., F)``."""
        return 1 if self.is_conv else -1

    def split_weight(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(w+, w-, [w+; w-])``, cached (:meth:`derived`); ``w+``/``w-`` are views of the stack."""
        split = self.derived("split", lambda: torch.cat([self.weight.clamp(min=0), self.weight.clamp(max=0)]))
        out = self.weight.shape[0]
        return split[:out], split[out:], split

    def backward_pair(self, s_pos: Tensor, s_neg: Tensor, input_like: Tensor | Sequence[int]) -> Tensor:
        """``s_pos * (w+)^T + s_neg * (w-)^T``. Two calls: stacking ``[s_pos, s_neg]`` into one call with
        ``[w+; w-]`` costs a copy of both and measured no faster on CPU."""
        w_pos, w_neg, _ = self.split_weight()
        return self.backward(s_pos, input_like, w_pos).add_(self.backward(s_neg, input_like, w_neg))

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self.is_conv:
            return F.linear(x, weight, bias)
        conv = _CONV_FUNCTIONS[self.ndim]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward_relu(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``relu(forward(x, weight, bias))``, rectified in place."""
        return self.forward(x, weight, bias).relu_()

    def backward(self, s: Tensor, input_like: Tensor | Sequence[int], weight: Tensor) -> Tensor:
        """``s * weight^T``: the input-gradient of ``forward`` for output gradient ``s``."""
        if not self.is_conv:
            return s.matmul(weight)
        if isinstance(input_like, Tensor):
            dummy = input_like
        else:  # only the shape matters to convolution_backward when the input gradient alone is asked for
            dummy = s.new_empty(1).expand(tuple(input_like))
        return torch.ops.aten.convolution_backward(
            s, dummy, weight, None, self.stride, self.padding, self.dilation,
            False, [0] * self.ndim, self.groups, [True, False, False],
        )[0]

    def bias_view(self, bias: Tensor, like: Tensor) -> Tensor:
        """The bias shaped to broadcast over an output ``like`` ((C,) -> (1, C, 1, 1) for conv2d)."""
        if not self.is_conv:
            return bias
        return bias.view(1, -1, *([1] * (like.ndim - 2)))


def _explicit_padding(module: Any) -> tuple[int, ...]:
    """Integer padding of a conv layer; 'same'/'valid' are resolved because convolution_backward needs ints."""
    if module.padding_mode != "zeros":
        # Checked earlier by the graph builder, which names the layer; this is a last guard.
        raise ValueError(f"padding_mode {module.padding_mode!r} is not supported")
    padding = module.padding
    if padding == "valid":
        return (0,) * (module.weight.ndim - 2)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(t % 2 for t in total) or any(s != 1 for s in module.stride):
            raise ValueError("padding='same' with an asymmetric padding is not supported")
        return tuple(t // 2 for t in total)
    return tuple(padding)


@overload
def _widen(t: Tensor) -> Tensor: ...
@overload
def _widen(t: None) -> None: ...
def _widen(t: Tensor | None) -> Tensor | None:
    """float16/bfloat16 (autocast forward) -> float32, so rules compute and accumulate in float32."""
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


_in_place = threading.local()


def rectifying() -> bool:
    """Whether a layer marked by the graph builder may apply the ReLU that follows it itself (in place on its
    output) and explain its output relevance as zero wherever that output is zero (:class:`LinearRelevance`);
    not within :func:`outputs_kept`, where relevance may be seeded at any layer's output."""
    return getattr(_in_place, "allowed", True)


class LinearRelevance(torch.autograd.Function):
    """Forward: the layer's output ``z``, or with ``rectify`` (and :func:`rectifying`) ``relu(z)`` written
    into ``z``: the graph builder marks a layer so when a ReLU is its output's only reader and every path
    from that ReLU multiplies relevance by the activation it reaches (so relevance is zero where the ReLU's
    output is zero, i.e. where ``z <= 0``); the rule then gets ``relu(z)`` as its ``z`` (the tensor the next
    layer keeps as its input: no second copy held) and explains through ``rule.rectified_relevance``.
    Backward: the rule's input relevance from the output relevance."""

    @staticmethod
    def forward(ctx, x: Tensor, wrapper: Any, rectify: bool = False) -> Tensor:
        layer: LinearLayer = wrapper.layer
        rule = wrapper.rule
        ctx.rectified = rectify and rectifying()
        if ctx.rectified:
            z, for_rule = rule.forward_rectified(layer, x)  # z = relu(z); for_rule is z itself or None
        else:
            z, for_rule = rule.forward(layer, x)
        ctx.wrapper = wrapper
        ctx.input_shape = x.shape
        # Save only what the rule reads in the backward pass: that keeps peak memory near the gradient's.
        ctx.save_for_backward(x if rule.needs_input else None, for_rule)
        # Under autocast z comes out in bf16/fp16; hand the next layer float32 so that the relevance
        # autograd passes back between layers stays float32 (autograd casts gradients to input dtypes).
        return z.to(x.dtype) if z.dtype != x.dtype else z

    @staticmethod
    def backward(ctx, relevance: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        x, z = ctx.saved_tensors
        wrapper = ctx.wrapper
        # Under autocast the forward ran in bf16/fp16; the rule itself always computes in float32 with
        # the float32 weights, so relevance is accumulated in float32.
        x, z, relevance = _widen(x), _widen(z), _widen(relevance)
        rule_input = x if x is not None else ctx.input_shape
        explain = wrapper.rule.rectified_relevance if ctx.rectified else wrapper.rule.relevance
        return explain(wrapper.layer, rule_input, z, relevance), None, None


@contextlib.contextmanager
def outputs_kept() -> Iterator[None]:
    """Within (on this thread): no activation overwrites a layer's output in place, so that a hook on the
    layer sees the output as the layer computed it, and no layer applies the ReLU after it itself
    (:func:`rectifying`), so that relevance may be seeded at any output (:meth:`spray.lrp.LRP.at_layer`)."""
    previous = getattr(_in_place, "allowed", True)
    _in_place.allowed = False
    try:
        yield
    finally:
        _in_place.allowed = previous


class PassRelevance(torch.autograd.Function):
    """Forward: ``fn(x)``, or ``x`` itself where the layer that computed ``x`` has applied this ReLU already
    (``applied``, see :class:`LinearRelevance`). Backward: the output relevance unchanged (element-wise
    activations)."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], applied: bool = False) -> Tensor:
        if applied and rectifying():
            return x
        out = fn(x)
        return out.to(x.dtype) if out.dtype != x.dtype else out

    @staticmethod
    def backward(ctx, relevance: Tensor):
        return relevance, None, None


class NormRelevance(torch.autograd.Function):
    """Forward: ``z = fn(x)`` for a linear, parameter-free ``fn`` (average pooling, mean).

    Backward: ``R_in = x * vjp_fn(R / stabilize(z))``, zennit's ``Norm`` rule: each input gets the share
    it contributed to the pooled value.
    """

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], stabilizer: float) -> Tensor:
        z = fn(x)
        z = z.to(x.dtype) if z.dtype != x.dtype else z
        ctx.fn = fn
        ctx.stabilizer = stabilizer
        ctx.save_for_backward(x, z)
        return z

    @staticmethod
    def backward(ctx, relevance: Tensor):
        x, z = (_widen(t) for t in ctx.saved_tensors)
        relevance = _widen(relevance)
        s = epsilon_quotient(relevance, z, ctx.stabilizer)
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(ctx.fn(probe), probe, s)
        return x * grad, None, None


class SumRelevance(torch.autograd.Function):
    """Forward: ``z = a_1 + ... + a_n`` (residual additions). Backward: ``R_i = a_i * R / stabilize(z)``.

    Each summand gets relevance in proportion to its contribution, so relevance is conserved through a
    skip connection instead of being copied to both branches (which the plain gradient of ``+`` does).
    Broadcast summands get their relevance summed back to their own shape.

    With ``rectify`` (and :func:`rectifying`) the ReLU after the sum is applied here, in place, as for
    :class:`LinearRelevance`: relevance is then zero where ``z <= 0``, and ``relu(z) + eps`` is the
    stabilised denominator wherever it is not.
    """

    @staticmethod
    def forward(ctx, stabilizer: float, rectify: bool, *summands: Tensor) -> Tensor:
        ctx.rectified = rectify and rectifying()
        if ctx.rectified and len(summands) == 2 and summands[0].shape == summands[1].shape:
            z = torch.ops.aten._add_relu(*summands)  # one pass, where adding and rectifying take two
        else:
            z = summands[0]
            for summand in summands[1:]:
                z = z + summand
            if ctx.rectified:
                z = z.relu_() if len(summands) > 1 else z.relu()  # never in place on a summand
        ctx.stabilizer = stabilizer
        ctx.save_for_backward(z, *summands)
        return z

    @staticmethod
    def backward(ctx, relevance: Tensor):
        z, *summands = ctx.saved_tensors
        z, relevance = _widen(z), _widen(relevance)
        # a fresh tensor: the last share is written into it
        quotient = rectified_quotient if ctx.rectified else epsilon_quotient
        s = quotient(relevance, z, ctx.stabilizer)
        wanted = [index for index in range(len(summands)) if ctx.needs_input_grad[index + 2]]
        grads: list[Tensor | None] = [None] * len(summands)
        for index in wanted:
            summand = summands[index].to(s.dtype)
            if index == wanted[-1] and summand.shape == s.shape:
                grads[index] = s.mul_(summand)
                continue
            share = summand * s
            grads[index] = share.sum_to_size(summand.shape) if share.shape != summand.shape else share
        return (None, None, *grads)


class RectifiedSumInPlace(torch.autograd.Function):
    """``relu(target + other)`` written into ``target``: a residual sum whose ReLU it applies (see
    :class:`SumRelevance`, ``rectify``), where ``target`` is a layer's output that nothing else reads or keeps.
    No fresh activation-sized tensor in the forward pass. Backward: ``R_other = other * s`` and
    ``R_target = r * s - R_other`` with ``s = R / (r + eps)``, ``r`` the rectified sum: ``target = r - other``
    wherever ``r > 0``, and ``s = 0`` wherever ``r = 0`` (relevance is zero there), so both shares are those
    of :class:`SumRelevance` up to rounding."""

    @staticmethod
    def forward(ctx, stabilizer: float, target: Tensor, other: Tensor) -> Tensor:
        torch.ops.aten._add_relu.out(target, other, out=target)
        ctx.mark_dirty(target)
        ctx.stabilizer = stabilizer
        ctx.save_for_backward(target, other)
        return target

    @staticmethod
    def backward(ctx, relevance: Tensor):
        rectified, other = (_widen(t) for t in ctx.saved_tensors)
        s = rectified_quotient(_widen(relevance), rectified, ctx.stabilizer)
        for_other = other * s
        return None, s.mul_(rectified).sub_(for_other), for_other


def sum_in_place_fits(target: Tensor, other: Tensor) -> bool:
    """Whether :class:`RectifiedSumInPlace` may write into ``target``: same shape, dtype and layout as
    ``other``, dense, on a thread that is not keeping layer outputs (:func:`outputs_kept`)."""
    return (rectifying() and target.shape == other.shape and target.dtype == other.dtype
            and target.stride() == other.stride()
            and (target.is_contiguous() or (target.ndim == 4 and target.is_contiguous(memory_format=torch.channels_last))))
