"""spray's LRP engine, in plain torch.

Three small concepts, as in zennit: *rules* (how relevance passes one layer, :mod:`spray.lrp.rules`),
*composites* (which rule each layer gets, :mod:`spray.lrp.composites`) and *canonizers* (BatchNorm
folding, :mod:`spray.lrp.canonizers`). :mod:`spray.lrp.graph` applies them to the model's torch.fx
graph; :class:`LRP` is the entry point::

    lrp = LRP(model, composite="epsilon_plus_flat")
    logits, relevance = lrp(x, targets)   # x (B, C, H, W), targets (B,) -> (B, K), (B, C, H, W)
"""

from spray.lrp.composites import COMPOSITES, Composite, custom_composite, named_composite
from spray.lrp.engine import LRP, conservation
from spray.lrp.methods import METHODS, attributor, attributor_from_config
from spray.lrp.rules import RULES, make_rule

__all__ = [
    "COMPOSITES",
    "Composite",
    "LRP",
    "METHODS",
    "RULES",
    "attributor",
    "attributor_from_config",
    "conservation",
    "custom_composite",
    "make_rule",
    "named_composite",
]
