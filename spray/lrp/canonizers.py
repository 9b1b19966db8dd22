"""Canonizers: rewrite the model into an equivalent one LRP rules apply to.

BatchNorm folding: a BatchNorm that directly follows a Conv/Linear (the conv's output feeds only the
BatchNorm) is an affine map per channel, so it can be merged into the conv's weight and bias:
``w' = w * scale``, ``b' = (b - mean) * scale + beta`` with ``scale = gamma / sqrt(var + eps)`` (the same
arithmetic as zennit's ``MergeBatchNorm``). Rules then see one linear layer with the effective weights,
which is what they are defined for. A BatchNorm that does not follow a Conv/Linear (pre-activation
blocks: BN -> ReLU -> Conv) cannot be folded without changing the function at zero-padded borders; it
stays and the composites give it the pass rule, as zennit does.
"""

from __future__ import annotations

from typing import Union, cast

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from spray.errors import ModelError
from spray.lrp.ops import CONV_TYPES, LINEAR_TYPES

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
Foldable = Union[_ConvNd, nn.Linear]  # noqa: UP007 (a runtime alias)


@torch.no_grad()
def fold_batchnorm(layer: Foldable, batchnorm: _BatchNorm) -> None:
    """Merge ``batchnorm`` (eval mode, running statistics) into ``layer`` in place.

    ``layer``: Conv1d/2d/3d or Linear with ``out`` channels; ``batchnorm`` normalises those ``out``
    channels. ``layer`` gains a bias if it had none.
    """
    mean, var = batchnorm.running_mean, batchnorm.running_var
    if mean is None or var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    weight = layer.weight
    gamma = batchnorm.weight if batchnorm.weight is not None else torch.ones_like(var)
    beta = batchnorm.bias if batchnorm.bias is not None else torch.zeros_like(mean)
    scale = gamma / (var + batchnorm.eps) ** 0.5
    bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
    new_weight = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias - mean) * scale + beta
    layer.weight = nn.Parameter(new_weight, requires_grad=False)
    layer.bias = nn.Parameter(new_bias, requires_grad=False)


def fold_batchnorms(gm: fx.GraphModule, tolerance: float = 1e-4) -> dict[str, str]:
    """Fold every BatchNorm node that follows a Conv/Linear node in ``gm``; returns ``{bn name: layer name}``.

    Each fold is checked: on a random probe input the folded layer must reproduce ``batchnorm(layer(x))``
    to ``tolerance`` relative to the output's scale, else ModelError names the pair.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], BATCHNORMS):
            continue
        producer = node.args[0]
        if not (
            isinstance(producer, fx.Node)
            and producer.op == "call_module"
            and isinstance(modules[producer.target], LINEAR_TYPES)
            and len(producer.users) == 1
            and calls[str(producer.target)] == 1  # a shared layer cannot absorb one of its uses' BatchNorm
            and calls[str(node.target)] == 1
        ):
            continue
        layer = cast(Foldable, modules[str(producer.target)])
        batchnorm = cast(_BatchNorm, modules[str(node.target)])
        if batchnorm.running_mean is None or batchnorm.num_features != layer.weight.shape[0]:
            continue
        probe = _probe_input(layer)
        with torch.no_grad():
            expected = batchnorm(layer(probe))
            fold_batchnorm(layer, batchnorm)
            got = layer(probe)
        scale = expected.abs().max().clamp(min=1e-12)
        if not torch.isfinite(got).all() or (got - expected).abs().max() > tolerance * scale:
            raise ModelError(
                f"folding BatchNorm '{node.target}' into '{producer.target}' changed the layer's output "
                f"(max difference {(got - expected).abs().max().item():.3g}); check the BatchNorm's statistics"
            )
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        folded[str(node.target)] = str(producer.target)
    if folded:
        gm.graph.lint()
        gm.recompile()
        # Drop the folded BatchNorm modules so that they are neither moved nor listed as layers.
        for bn_name in folded:
            parent_name, _, child = bn_name.rpartition(".")
            parent = gm.get_submodule(parent_name) if parent_name else gm
            if isinstance(parent, nn.Sequential):
                parent._modules[child] = nn.Identity()  # keep Sequential indices stable
            else:
                delattr(parent, child)
    return folded


def _probe_input(layer: Foldable) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    weight = layer.weight
    if isinstance(layer, CONV_TYPES):
        channels = weight.shape[1] * layer.groups
        size = [d * (k - 1) + 3 for d, k in zip(layer.dilation, layer.kernel_size)]
        shape = (2, channels, *size)
    else:
        shape = (2, weight.shape[1])
    return torch.randn(shape, generator=generator).to(device=weight.device, dtype=weight.dtype)
