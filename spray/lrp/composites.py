"""Composites: which rule each layer gets.

A composite maps a layer (its qualified name, its module, whether it is a *first* layer) to a rule. The
named composites give the same assignment as zennit's composites of that name:

=============================  ======================  ==================  ===========================
name                           Conv layers             Linear layers       first layer
=============================  ======================  ==================  ===========================
``epsilon``                    epsilon                 epsilon             (same)
``epsilon_plus``               z+                      epsilon             (same)
``epsilon_plus_flat``          z+                      epsilon             flat (conv or linear)
``epsilon_gamma_box``          gamma                   epsilon             z^B (conv only)
``epsilon_alpha2_beta1``       alpha-beta              epsilon             (same)
``epsilon_alpha2_beta1_flat``  alpha-beta              epsilon             flat (conv or linear)
=============================  ======================  ==================  ===========================

Every composite also assigns, like zennit's ``layer_map_base``: element-wise activations -> pass,
average pooling, means and sums of branches -> norm, BatchNorm that could not be folded -> pass; max
pooling, reshapes, concatenation and dropout keep the gradient. (zennit has no ``epsilon`` composite;
ours is that base map plus epsilon on every conv/linear layer.)

*First layer*: zennit takes the first Conv/Linear in module registration order; spray takes the
Conv/Linear layers that read the model input with no other Conv/Linear in between, which is the same
layer for a sequential network and the meaningful one for graphs whose modules are registered out of
order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from spray.lrp.ops import CONV_TYPES
from spray.lrp.rules import (
    AlphaBeta,
    Bound,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Pass,
    Rule,
    ZBox,
    ZPlus,
    make_rule,
)
from spray.names import COMPOSITE_NAMES


class Sum(nn.Module):
    """Sum of two or more tensors: what the engine turns ``a + b`` (residual additions) into."""

    def forward(self, *summands):  # pragma: no cover - never called, replaced by the LRP wrapper
        out = summands[0]
        for summand in summands[1:]:
            out = out + summand
        return out


class Mean(nn.Module):
    """``x.mean(dim, keepdim)``: global average pooling written as a tensor method."""

    def __init__(self, dim: Any, keepdim: bool = False) -> None:
        super().__init__()
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        return x.mean(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class ScalarMul(nn.Module):
    """``x * c`` or ``x / c`` with a constant ``c``: rescales values but not relevance (pass)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, name)
    for name in (
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish",
        "Hardtanh", "Hardswish", "Hardsigmoid", "Hardshrink", "Softshrink", "Tanhshrink", "Threshold",
        "Sigmoid", "LogSigmoid", "Tanh", "Softplus", "Softsign",
    )
    if hasattr(nn, name)
) + (ScalarMul,)
AVGPOOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, Mean,
)
MAXPOOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
IDENTITY_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
SUM_TYPES: tuple[type[nn.Module], ...] = (Sum,)


@dataclass
class Composite:
    """A rule assignment: ``name_map`` (patterns on qualified names) first, then ``first_map`` for first
    layers, then ``layer_map`` (module types); the first match wins, as in zennit's
    ``NameLayerMapComposite`` and ``SpecialFirstLayerMapComposite``.

    Each map is a list of ``(key, rule)``; keys of ``layer_map``/``first_map`` are tuples of module
    types, keys of ``name_map`` are tuples of ``fnmatch`` patterns (``"features.*"``).
    Layers no entry matches keep the gradient (max pooling, reshapes, ...).
    """

    name: str
    layer_map: list[tuple[tuple[type, ...], Rule]]
    first_map: list[tuple[tuple[type, ...], Rule]] = field(default_factory=list)
    name_map: list[tuple[tuple[str, ...], Rule]] = field(default_factory=list)

    def rule_for(self, name: str, module: nn.Module, first: bool) -> Rule | None:
        for patterns, rule in self.name_map:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                return rule
        if first:
            for types, rule in self.first_map:
                if isinstance(module, types):
                    return rule
        for types, rule in self.layer_map:
            if isinstance(module, types):
                return rule
        return None


def layer_map_base(stabilizer: float = 1e-6) -> list[tuple[tuple[type, ...], Rule]]:
    """The assignment shared by every composite (zennit's ``layer_map_base``)."""
    return [
        (ACTIVATION_TYPES, Pass()),
        (SUM_TYPES, Norm(stabilizer)),
        (AVGPOOL_TYPES, Norm(stabilizer)),
        (BATCHNORM_TYPES, Pass()),
        (MAXPOOL_TYPES + IDENTITY_TYPES, Gradient()),
    ]


_LINEAR_ONLY = (nn.Linear,)
_CONV_OR_LINEAR = CONV_TYPES + (nn.Linear,)


def named_composite(
    name: str,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    alpha: float = 2.0,
    low: Bound | None = None,
    high: Bound | None = None,
    stabilizer: float = 1e-6,
) -> Composite:
    """The composite called ``name`` (one of :data:`COMPOSITES`) with its parameters.

    ``epsilon`` for dense layers, ``gamma`` for the gamma rule, ``alpha`` for alpha-beta (beta =
    alpha - 1), ``low``/``high`` the z^B bounds (required for ``epsilon_gamma_box``), ``stabilizer``
    the small constant of every other denominator.
    """
    base = layer_map_base(stabilizer)
    dense = (_LINEAR_ONLY, Epsilon(epsilon))
    if name == "epsilon":
        return Composite(name, base + [(CONV_TYPES, Epsilon(epsilon)), dense])
    if name == "epsilon_plus":
        return Composite(name, base + [(CONV_TYPES, ZPlus(stabilizer)), dense])
    if name == "epsilon_plus_flat":
        return Composite(
            name, base + [(CONV_TYPES, ZPlus(stabilizer)), dense], first_map=[(_CONV_OR_LINEAR, Flat(stabilizer))]
        )
    if name == "epsilon_gamma_box":
        if low is None or high is None:
            raise ValueError(
                "composite 'epsilon_gamma_box' needs the input bounds low= and high= (a float or one value "
                "per channel: the smallest and largest value a normalised input pixel can take)"
            )
        return Composite(
            name,
            base + [(CONV_TYPES, Gamma(gamma, stabilizer)), dense],
            first_map=[(CONV_TYPES, ZBox(low, high, stabilizer))],
        )
    if name in ("epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat"):
        layers = base + [(CONV_TYPES, AlphaBeta(alpha, alpha - 1.0, stabilizer)), dense]
        first: list[tuple[tuple[type, ...], Rule]] = (
            [(_CONV_OR_LINEAR, Flat(stabilizer))] if name.endswith("_flat") else [])
        return Composite(name, layers, first_map=first)
    raise ValueError(f"unknown composite {name!r}; expected one of {', '.join(COMPOSITES)}")


COMPOSITES: tuple[str, ...] = COMPOSITE_NAMES  # one list, kept where the torch-free config reads it

# Layer-type names a user-defined composite may use, and the types they stand for.
LAYER_TYPE_NAMES: dict[str, tuple[type, ...]] = {
    "conv": CONV_TYPES,
    "linear": _LINEAR_ONLY,
    "activation": ACTIVATION_TYPES,
    "avgpool": AVGPOOL_TYPES,
    "maxpool": MAXPOOL_TYPES,
    "sum": SUM_TYPES,
    "batchnorm": BATCHNORM_TYPES,
}


def custom_composite(
    entries: Sequence[dict[str, Any]],
    base: str | None = None,
    name: str = "custom",
    **base_params: Any,
) -> Composite:
    """A user-defined composite, e.g. from the YAML config::

        composite:
          - {layers: [conv], first: true, rule: flat}
          - {names: ["classifier.*"], rule: epsilon, epsilon: 0.01}
          - {layers: [conv], rule: gamma, gamma: 0.1}

    Each entry has ``layers`` (type names from :data:`LAYER_TYPE_NAMES` or ``torch.nn`` class names such
    as ``Conv2d``) or ``names`` (``fnmatch`` patterns on qualified layer names), optionally
    ``first: true`` (only for first layers), a ``rule`` name from :data:`spray.lrp.rules.RULES` and that
    rule's parameters. Entries are matched in order, names before types; layers no entry matches get
    the rule of ``base`` (a named composite) if given, else the shared base map.
    """
    name_map: list[tuple[tuple[str, ...], Rule]] = []
    first_map: list[tuple[tuple[type, ...], Rule]] = []
    layer_map: list[tuple[tuple[type, ...], Rule]] = []
    for index, entry in enumerate(entries):
        entry = dict(entry)
        where = f"composite entry {index}"
        rule_name = entry.pop("rule", None)
        if rule_name is None:
            raise ValueError(f"{where}: missing 'rule'")
        names = entry.pop("names", None)
        layers = entry.pop("layers", None)
        first = bool(entry.pop("first", False))
        if (names is None) == (layers is None):
            raise ValueError(f"{where}: give exactly one of 'names' (patterns) or 'layers' (layer types)")
        rule = make_rule(rule_name, **entry)
        if names is not None:
            name_map.append((tuple([names] if isinstance(names, str) else names), rule))
            continue
        types = _layer_types([layers] if isinstance(layers, str) else layers, where)
        (first_map if first else layer_map).append((types, rule))
    if base is not None:
        fallback = named_composite(base, **base_params)
        return Composite(
            name,
            layer_map + fallback.layer_map,
            first_map=first_map + fallback.first_map,
            name_map=name_map + fallback.name_map,
        )
    stabilizer = base_params.get("stabilizer", 1e-6)
    return Composite(name, layer_map + layer_map_base(stabilizer), first_map=first_map, name_map=name_map)


def _layer_types(names: Iterable[str], where: str) -> tuple[type, ...]:
    types: list[type] = []
    for type_name in names:
        if type_name in LAYER_TYPE_NAMES:
            types.extend(LAYER_TYPE_NAMES[type_name])
        elif isinstance(getattr(nn, type_name, None), type) and issubclass(getattr(nn, type_name), nn.Module):
            types.append(getattr(nn, type_name))
        else:
            raise ValueError(
                f"{where}: unknown layer type {type_name!r}; expected one of {', '.join(LAYER_TYPE_NAMES)} "
                "or a torch.nn class name such as 'Conv2d'"
            )
    return tuple(types)


def resolve_composite(composite: str | Composite, **params: Any) -> Composite:
    """A :class:`Composite` from a name (with parameters) or as given."""
    if isinstance(composite, Composite):
        return composite
    return named_composite(composite, **params)
