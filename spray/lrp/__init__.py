"""spray's LRP engine, in plain torch (zennit is only the test oracle).

Three small concepts, as in zennit: *rules* (how relevance passes one layer, :mod:`spray.lrp.rules`),
*composites* (which rule each layer gets, :mod:`spray.lrp.composites`) and *canonizers* (BatchNorm
folding, :mod:`spray.lrp.canonizers`). :mod:`spray.lrp.graph` applies them to the model's torch.fx
graph; :class:`LRP` is the entry point::

    lrp = LRP(model, composite="epsilon_plus_flat")
    logits, relevance = lrp(x, targets)   # x (B, C, H, W), targets (B,) -> (B, K), (B, C, H, W)
    lrp.rules                             # {"features.0": "flat", "features.1": "folded into features.0", ...}
    lrp.conservation                      # (B,) sum of relevance / explained logit

Rules: zero (LRP-0), epsilon, gamma, alpha_beta, zplus, flat, wsquare, zbox, pass, norm, gradient.
Composites (zennit's assignment): epsilon, epsilon_plus, epsilon_plus_flat, epsilon_gamma_box,
epsilon_alpha2_beta1, epsilon_alpha2_beta1_flat; or :func:`custom_composite` (layer types / name
patterns -> rules with parameters).

What the engine handles, on any graph torch.fx can trace:

- Conv1d/2d/3d (any stride, padding, dilation, groups, so depthwise too; zero padding) and Linear:
  the composite's rule;
- BatchNorm1d/2d/3d right after a Conv/Linear: folded into it (each fold checked on a probe input);
  elsewhere (pre-activation BN -> ReLU -> Conv): pass;
- element-wise activations (ReLU, ReLU6, LeakyReLU, GELU, SiLU, sigmoid, tanh, ..., modules or
  functions) and products with a constant: pass;
- AvgPool, AdaptiveAvgPool, ``x.mean(dims)``: norm (each input gets its share of the average);
- additions of branches (``out += identity``, ``torch.add``): norm, i.e. relevance split in proportion
  to each summand's contribution, so skips conserve relevance;
- MaxPool / AdaptiveMaxPool: gradient (winner takes all); flatten, view/reshape, torch.cat, slicing,
  Dropout (eval), Identity: gradient (relevance routed unchanged).

Anything else (softmax, products of two tensors, LSTMs, attention, ...) raises
:class:`spray.errors.ModelError` naming the layer or graph node and its source line, and suggesting
a method that works on any model (:func:`attributor`: gradient, gradient_x_input, smoothgrad,
integrated_gradients, occlusion).
"""

from spray.lrp.composites import COMPOSITES, Composite, custom_composite, named_composite
from spray.lrp.engine import LRP, conservation
from spray.lrp.methods import METHODS, attributor, attributor_from_config
from spray.lrp.rules import RULES, make_rule

__all__ = [
    "COMPOSITES",
    "LRP",
    "METHODS",
    "RULES",
    "Composite",
    "attributor",
    "attributor_from_config",
    "conservation",
    "custom_composite",
    "make_rule",
    "named_composite",
]
