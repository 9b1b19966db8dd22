"""The model's computation graph, prepared for LRP.

``build_lrp_graph(model, composite)`` works on a private copy of the model:

1. trace it with ``torch.fx`` (so functional code such as ``out += identity`` or ``torch.cat`` is seen);
2. turn supported functional calls into modules (``a + b`` -> :class:`Sum`, ``F.relu`` -> ``nn.ReLU``,
   ``x.mean((2, 3))`` -> :class:`Mean`, ...), so every operation has a name and a type a composite can
   match; anything else stops with a :class:`~spray.errors.ModelError` naming the node, its source line
   and a fallback;
3. fold every BatchNorm that directly follows a Conv/Linear into it (the canonizer), checking the folded
   layer against the pair it replaces;
4. ask the composite for each layer's rule and wrap the layer so that its backward pass applies it.

The result is an ``fx.GraphModule``: its forward is the model's forward, and the gradient of its input
for an output gradient ``R`` is the LRP relevance for output relevance ``R``.
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from spray.errors import ModelError
from spray.lrp.canonizers import fold_batchnorms
from spray.lrp.composites import (
    ACTIVATION_TYPES,
    AVGPOOL_TYPES,
    BATCHNORM_TYPES,
    IDENTITY_TYPES,
    MAXPOOL_TYPES,
    SUM_TYPES,
    Composite,
    Mean,
    ScalarMul,
    Sum,
)
from spray.lrp.ops import (
    CONV_TYPES,
    LINEAR_TYPES,
    LinearLayer,
    LinearRelevance,
    NormRelevance,
    PassRelevance,
    RectifiedSumInPlace,
    SumRelevance,
    sum_in_place_fits,
)
from spray.lrp.rules import AlphaBeta, Epsilon, Gamma, Gradient, LinearRule, Norm, Pass, Rule, Zero, ZPlus

FALLBACK = (
    "as a fallback, set attribution.method to 'gradient_x_input' or 'integrated_gradients' "
    "(they work with any differentiable model)"
)

# Shape-only and routing operations: their gradient moves relevance without changing it.
_ROUTING_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.squeeze, torch.unsqueeze,
    torch.transpose, torch.permute, torch.narrow, torch.split, torch.chunk, operator.getitem, getattr,
    torch.Tensor.size, F.dropout, F.dropout2d, F.dropout1d, F.dropout3d,
}
_ROUTING_METHODS = {
    "flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous", "size", "dim", "permute",
    "transpose", "split", "chunk", "narrow", "expand_as", "view_as", "reshape_as", "clone", "float",
}
_ACTIVATION_FUNCTIONS: dict[Any, Callable[..., nn.Module]] = {
    F.relu: lambda inplace=False: nn.ReLU(),
    torch.relu: lambda: nn.ReLU(),
    F.relu6: lambda inplace=False: nn.ReLU6(),
    F.leaky_relu: lambda negative_slope=0.01, inplace=False: nn.LeakyReLU(negative_slope),
    F.hardtanh: lambda min_val=-1.0, max_val=1.0, inplace=False: nn.Hardtanh(min_val, max_val),
    F.elu: lambda alpha=1.0, inplace=False: nn.ELU(alpha),
    F.gelu: lambda approximate="none": nn.GELU(approximate),
    F.silu: lambda inplace=False: nn.SiLU(),
    F.hardswish: lambda inplace=False: nn.Hardswish(),
    torch.sigmoid: lambda: nn.Sigmoid(),
    F.sigmoid: lambda: nn.Sigmoid(),
    torch.tanh: lambda: nn.Tanh(),
    F.tanh: lambda: nn.Tanh(),
}
_ACTIVATION_METHODS: dict[str, Callable[..., nn.Module]] = {
    "relu": lambda: nn.ReLU(), "relu_": lambda: nn.ReLU(), "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
}
_POOL_FUNCTIONS: dict[Any, Callable[..., nn.Module]] = {
    F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
    F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d, F.avg_pool3d: nn.AvgPool3d,
    F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d, F.adaptive_max_pool1d: nn.AdaptiveMaxPool1d,
    F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d, F.adaptive_max_pool3d: nn.AdaptiveMaxPool3d,
}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div}

SUPPORTED_MODULES: tuple[type, ...] = (
    LINEAR_TYPES + ACTIVATION_TYPES + AVGPOOL_TYPES + MAXPOOL_TYPES + BATCHNORM_TYPES + IDENTITY_TYPES + SUM_TYPES
)


class LRPLinear(nn.Module):
    """A Conv/Linear layer whose backward pass applies a :class:`LinearRule`."""

    def __init__(self, module: nn.Module, rule: LinearRule, input_nonnegative: bool = False) -> None:
        super().__init__()
        self.module = module
        self.rule = rule
        self.input_nonnegative = input_nonnegative
        self._make_layer()

    def _make_layer(self) -> None:
        self.layer = LinearLayer(self.module)
        self.layer.input_nonnegative = self.input_nonnegative

    def _apply(self, fn, *args, **kwargs):  # keep the LinearLayer's tensors in step with .to(device)
        result = super()._apply(fn, *args, **kwargs)
        self._make_layer()
        return result

    def forward(self, x: Tensor, rectify: bool = False) -> Tensor:
        return LinearRelevance.apply(x, self, rectify)

    def extra_repr(self) -> str:
        return f"rule={self.rule.describe()}"


class LRPPass(nn.Module):
    """An element-wise layer whose backward pass leaves relevance unchanged. ``applied``: the layer that
    computed ``x`` applies this ReLU itself (``rectify``, :class:`~spray.lrp.ops.LinearRelevance`)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, applied: bool = False) -> Tensor:
        return PassRelevance.apply(x, self.module, applied and type(self.module) is nn.ReLU)


class LRPNorm(nn.Module):
    """Average pooling / mean whose backward pass splits relevance by contribution."""

    def __init__(self, module: nn.Module, rule: Norm) -> None:
        super().__init__()
        self.module = module
        self.rule = rule

    def forward(self, x: Tensor) -> Tensor:
        return NormRelevance.apply(x, self.module, self.rule.stabilizer)


class LRPSum(nn.Module):
    """A sum of branches whose backward pass splits relevance by each summand's contribution."""

    def __init__(self, rule: Norm) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, *summands: Any, rectify: bool = False, overwrite: int | None = None) -> Tensor:
        """``overwrite``: the index of a summand that nothing else reads or keeps (the graph builder's
        finding), into which a rectified sum of two may be written."""
        tensors = [s for s in summands if isinstance(s, Tensor)]
        constant = sum(s for s in summands if not isinstance(s, Tensor))
        if constant:
            tensors.append(torch.as_tensor(constant, dtype=tensors[0].dtype, device=tensors[0].device))
        if rectify and overwrite is not None and len(summands) == len(tensors) == 2:
            target, other = tensors[overwrite], tensors[1 - overwrite]
            if target is not other and sum_in_place_fits(target, other):
                return RectifiedSumInPlace.apply(self.rule.stabilizer, target, other)
        return SumRelevance.apply(self.rule.stabilizer, rectify, *tensors)


class SumGradient(nn.Module):
    """A sum of branches with the plain gradient (a composite that maps sums to 'gradient')."""

    def forward(self, *summands: Any) -> Tensor:
        out = summands[0]
        for summand in summands[1:]:
            out = out + summand
        return out


def source_line(node: fx.Node) -> str:
    """``file:line: code`` of the user's code that created ``node`` (from fx's recorded stack trace)."""
    trace = node.stack_trace or ""
    matches = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', trace)
    # The innermost frame is torch's own code (the fx proxy); the user's line is the last one outside torch.
    user = [m for m in matches if "/torch/" not in m[0].replace("\\", "/")]
    if not user:
        return "source line unknown"
    path, line, code = user[-1]
    return f"{path}:{line}: {code.strip()}"


def _module_label(name: str, module: nn.Module) -> str:
    return f"layer '{name}' ({type(module).__module__}.{type(module).__name__})"


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` with torch.fx, keeping every ``torch.nn`` module a leaf; ModelError if it fails."""
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many kinds: TraceError, TypeError, NotImplementedError, ...
        raise ModelError(
            f"spray's LRP engine could not trace the model {type(model).__name__} with torch.fx "
            f"({type(error).__name__}: {error}); data-dependent control flow in forward() is the usual "
            f"cause; {FALLBACK}"
        ) from None
    return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)


def _add_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, unary: bool = False) -> str:
    """Replace ``node`` by a call of ``module`` on the node's arguments (``unary``: on its first only, for
    functions whose further arguments, like a dim or a slope, the module already holds)."""
    name = node.name
    while hasattr(gm, name):
        name = name + "_"
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (node.args[0],) if unary else tuple(node.args), {})
    new.meta = dict(node.meta)
    new.stack_trace = node.stack_trace
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return name


def _unsupported(node: fx.Node, what: str) -> ModelError:
    return ModelError(
        f"spray's LRP engine does not support {what} (graph node '{node.name}', {source_line(node)}); "
        f"supported: Conv1d/2d/3d, Linear, BatchNorm, element-wise activations, max/average pooling, "
        f"flatten/reshape, dropout, concatenation and additions of branches; {FALLBACK}"
    )


def canonicalize(gm: fx.GraphModule) -> None:
    """Turn supported functional calls into modules and reject what the engine cannot explain."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            # get_attr: a parameter or buffer used directly in forward(); the op using it is checked.
            continue
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, CONV_TYPES) and module.padding_mode != "zeros":
                raise ModelError(
                    f"{_module_label(node.target, module)} uses padding_mode={module.padding_mode!r}; "
                    f"spray's LRP engine supports zero padding only; {FALLBACK}"
                )
            if isinstance(module, SUPPORTED_MODULES):
                continue
            where = source_line(node)
            where = f" ({where})" if where != "source line unknown" else ""
            raise ModelError(
                f"{_module_label(node.target, module)} is not supported by spray's LRP engine{where}; "
                f"supported layers: Conv1d/2d/3d, Linear, BatchNorm1d/2d/3d, "
                f"element-wise activations, MaxPool/AvgPool/AdaptiveAvgPool, Flatten, Dropout, Identity; {FALLBACK}"
            )
        target = node.target
        if node.op == "call_function":
            if target in _ADD_FUNCTIONS:
                if node.kwargs.get("alpha", 1) != 1:
                    raise _unsupported(node, "torch.add with alpha")
                _add_module(gm, node, Sum())
            elif target in _MUL_FUNCTIONS:
                _scalar_mul(gm, node, divide=target in (operator.truediv, operator.itruediv, torch.div))
            elif target in _ACTIVATION_FUNCTIONS:
                module = _ACTIVATION_FUNCTIONS[target](*node.args[1:], **node.kwargs)
                _add_module(gm, node, module, unary=True)
            elif target in _POOL_FUNCTIONS:
                module = _POOL_FUNCTIONS[target](*node.args[1:], **node.kwargs)
                _add_module(gm, node, module, unary=True)
            elif target is torch.mean:
                _add_module(gm, node, _mean_module(node), unary=True)
            elif target in _ROUTING_FUNCTIONS:
                continue
            else:
                raise _unsupported(node, f"the function {_callable_name(target)}")
        elif node.op == "call_method":
            if target in ("add", "add_", "__add__", "__iadd__"):
                if node.kwargs.get("alpha", 1) != 1:
                    raise _unsupported(node, "Tensor.add with alpha")
                _add_module(gm, node, Sum())
            elif target in ("mul", "mul_", "div", "div_"):
                _scalar_mul(gm, node, divide=target.startswith("div"))
            elif target in _ACTIVATION_METHODS:
                _add_module(gm, node, _ACTIVATION_METHODS[target](), unary=True)
            elif target == "mean":
                _add_module(gm, node, _mean_module(node), unary=True)
            elif target in _ROUTING_METHODS:
                continue
            else:
                raise _unsupported(node, f"the tensor method .{target}()")
    gm.graph.lint()
    gm.recompile()


def _callable_name(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _mean_module(node: fx.Node) -> nn.Module:
    args = list(node.args[1:])
    dim = node.kwargs.get("dim", args[0] if args else None)
    keepdim = node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
    if dim is None:
        raise _unsupported(node, "a mean over all dimensions (including the batch)")
    return Mean(dim, bool(keepdim))


def _scalar_mul(gm: fx.GraphModule, node: fx.Node, divide: bool) -> None:
    left, right = node.args[0], node.args[1]
    if isinstance(left, fx.Node) and isinstance(right, (int, float)):
        tensor, factor = left, float(right)
    elif isinstance(right, fx.Node) and isinstance(left, (int, float)) and not divide:
        tensor, factor = right, float(left)
    else:
        raise _unsupported(node, "a product or quotient of two tensors (gating)")
    if divide:
        factor = 1.0 / factor
    name = node.name
    while hasattr(gm, name):
        name = name + "_"
    gm.add_submodule(name, ScalarMul(factor))
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (tensor,), {})
    new.meta = dict(node.meta)
    new.stack_trace = node.stack_trace
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def first_layers(gm: fx.GraphModule) -> set[str]:
    """Names of the Conv/Linear nodes that read the input with no other Conv/Linear in between."""
    modules = dict(gm.named_modules())
    after_linear: dict[fx.Node, bool] = {}
    firsts: set[str] = set()
    for node in gm.graph.nodes:
        inputs = [n for n in node.all_input_nodes]
        upstream = any(after_linear.get(n, False) for n in inputs)
        is_linear = node.op == "call_module" and isinstance(modules[node.target], LINEAR_TYPES)
        if is_linear and not upstream:
            firsts.add(node.target)
        after_linear[node] = upstream or is_linear
    return firsts


# Modules whose output is >= 0 whatever their input, and modules/ops that keep a non-negative input so.
_NONNEGATIVE_OUTPUT = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)
_KEEPS_SIGN = MAXPOOL_TYPES + AVGPOOL_TYPES + IDENTITY_TYPES + SUM_TYPES


def nonnegative_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value is >= 0 by construction; rules then skip their negative-input terms without
    looking at the data (they also check at run time when unsure)."""
    modules = dict(gm.named_modules())
    nonnegative: set[fx.Node] = set()
    for node in gm.graph.nodes:
        tensor_inputs = [n for n in node.all_input_nodes]
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, _NONNEGATIVE_OUTPUT) or (
                isinstance(module, _KEEPS_SIGN) and tensor_inputs and all(n in nonnegative for n in tensor_inputs)
            ):
                nonnegative.add(node)
        elif node.op in ("call_function", "call_method") and tensor_inputs:
            routing = node.target in _ROUTING_FUNCTIONS or node.target in _ROUTING_METHODS
            if routing and all(n in nonnegative for n in tensor_inputs):
                nonnegative.add(node)
    return nonnegative


def build_lrp_graph(model: nn.Module, composite: Composite) -> tuple[fx.GraphModule, dict[str, str]]:
    """Private, prepared copy of ``model`` for ``composite``; returns it and ``{layer name: rule name}``."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    private = copy.deepcopy(model).eval()
    for param in private.parameters():
        param.requires_grad_(False)
    for module in private.modules():
        # In-place activations would overwrite tensors the rules saved for the backward pass.
        if getattr(module, "inplace", False) is True:
            cast(Any, module).inplace = False
    gm = trace(private)
    canonicalize(gm)
    rules: dict[str, str] = {}
    folded = fold_batchnorms(gm)
    firsts = first_layers(gm)
    nonnegative = nonnegative_nodes(gm)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        name, module = node.target, modules[node.target]
        rule = composite.rule_for(name, module, name in firsts)
        input_nonnegative = bool(node.args) and node.args[0] in nonnegative
        wrapper = _wrap(name, module, rule, input_nonnegative)
        rules[name] = (rule or Gradient()).name
        if wrapper is not None:
            _set_submodule(gm, name, wrapper)
    for bn_name, target in folded.items():
        rules[bn_name] = f"folded into {target}"
    _rectify_layers(gm)
    gm.recompile()
    return gm, rules


def _rectify_layers(gm: fx.GraphModule) -> None:
    """Let a Conv/Linear layer or a sum of branches apply the ReLU that alone reads its output itself
    (``rectify``, in place; the ReLU node then passes its input on):

    - where the layer's rule keeps nothing of its output (z+, flat): nothing else sees ``z``;
    - where the layer's rule can explain from ``relu(z)`` (``rectifies``) or the layer is a sum, and relevance
      is zero wherever the ReLU's output is zero (:func:`_relevance_vanishes_at_zero`): the layer keeps
      ``relu(z)``, the tensor the next layer keeps as its input, instead of ``z``; gamma then needs one
      transposed product with half the channels (``Gamma.rectified_relevance``).

    The forward pass then allocates one activation-sized tensor less per such ReLU; a rectified sum of two
    is written into a summand that only it reads (``overwrite``, :func:`_overwritable_summand`), one less.
    """
    modules = dict(gm.named_modules())
    vanishes = _relevance_vanishes_at_zero(modules)
    for node in list(gm.graph.nodes):
        wrapper = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(wrapper, LRPPass) or type(wrapper.module) is not nn.ReLU or len(node.args) != 1:
            continue
        source = node.args[0]
        producer = modules.get(str(source.target)) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if not (isinstance(producer, (LRPLinear, LRPSum)) and isinstance(source, fx.Node) and len(source.users) == 1):
            continue
        # Per call, not per module: one module may be called at several places (a ResNet block's ReLU,
        # also after the skip sum, whose output the sum keeps).
        keeps_nothing = isinstance(producer, LRPLinear) and not producer.rule.keeps_output(producer.layer)
        if keeps_nothing or ((isinstance(producer, LRPSum) or producer.rule.rectifies) and vanishes(node)):
            source.kwargs = {**source.kwargs, "rectify": True}
            node.kwargs = {**node.kwargs, "applied": True}
            if isinstance(producer, LRPSum):
                overwrite = _overwritable_summand(source, modules)
                if overwrite is not None:
                    source.kwargs = {**source.kwargs, "overwrite": overwrite}


def _overwritable_summand(node: fx.Node, modules: dict[str, nn.Module]) -> int | None:
    """The index of a summand of ``node`` (a sum of two) that a Conv/Linear layer computed, that only this
    sum reads, and whose rule keeps nothing of it (z+): the rectified sum may be written into it."""
    if len(node.args) != 2:
        return None
    for index, summand in enumerate(node.args):
        producer = (modules.get(str(summand.target)) if isinstance(summand, fx.Node) and summand.op == "call_module"
                    else None)
        if (isinstance(summand, fx.Node) and isinstance(producer, LRPLinear) and len(summand.users) == 1
                and not producer.rule.keeps_output(producer.layer)):
            return index
    return None


# Rules whose input relevance is the input times a finite factor, so zero wherever their input is zero.
_MULTIPLYING_RULES: tuple[type[Rule], ...] = (Epsilon, Zero, ZPlus, AlphaBeta, Gamma)
# Element-wise activations with f(0) = 0, and layers routing values unchanged (max pooling: an input that
# is 0 and wins its window makes the pooled value 0).
_ZERO_KEEPING_PASS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, ScalarMul)
_ROUTING_MODULES = MAXPOOL_TYPES + IDENTITY_TYPES


def _relevance_vanishes_at_zero(modules: dict[str, nn.Module]) -> Callable[[fx.Node], bool]:
    """A test (memoised) of whether the relevance handed back to a node is zero wherever the node's value is
    zero, whatever the data: true when every path from it reaches a layer whose rule multiplies relevance by
    its input (the linear rules above, norm for pooling and sums) through activations with f(0) = 0 and
    routing (max pooling, reshapes, concatenation, dropout). False where a path reaches the model's output,
    a sum explained by the plain gradient, or a rule such as flat or z^B."""
    known: dict[fx.Node, bool] = {}

    def reader_keeps_zero(user: fx.Node) -> bool:
        if user.op == "call_module":
            module = modules[str(user.target)]
            if isinstance(module, LRPLinear):
                return isinstance(module.rule, _MULTIPLYING_RULES)
            if isinstance(module, (LRPNorm, LRPSum)):
                return True
            if isinstance(module, LRPPass):
                return isinstance(module.module, _ZERO_KEEPING_PASS) and vanishes(user)
            return isinstance(module, _ROUTING_MODULES) and vanishes(user)
        if user.op in ("call_function", "call_method"):
            routing = user.target in _ROUTING_FUNCTIONS or user.target in _ROUTING_METHODS
            return routing and vanishes(user)
        return False

    def vanishes(node: fx.Node) -> bool:
        if node not in known:
            known[node] = False  # a graph has no cycles; this guards the recursion all the same
            known[node] = all(reader_keeps_zero(user) for user in node.users)
        return known[node]

    return vanishes


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _wrap(name: str, module: nn.Module, rule: Rule | None, input_nonnegative: bool = False) -> nn.Module | None:
    if rule is None or isinstance(rule, Gradient):
        if isinstance(module, Sum):
            return SumGradient()
        return None
    if isinstance(rule, LinearRule):
        if not isinstance(module, LINEAR_TYPES):
            raise ModelError(f"rule {rule.name!r} is for Conv/Linear layers, but {_module_label(name, module)} got it")
        return LRPLinear(module, rule, input_nonnegative)
    if isinstance(rule, Pass):
        if isinstance(module, Sum):
            raise ModelError(f"rule 'pass' cannot be given to {_module_label(name, module)} (a sum of branches)")
        return LRPPass(module)
    if isinstance(rule, Norm):
        if isinstance(module, Sum):
            return LRPSum(rule)
        if isinstance(module, AVGPOOL_TYPES):
            return LRPNorm(module, rule)
        raise ModelError(f"rule 'norm' is for pooling and sums, but {_module_label(name, module)} got it")
    raise ModelError(f"rule {rule.name!r} cannot be given to {_module_label(name, module)}")
