"""Names the config schema accepts for the LRP engine, free of torch so that ``spray.config`` loads without it.

``spray.lrp`` builds what the names stand for; tests/test_config.py checks that both agree.
"""

from __future__ import annotations

# Named composites (zennit's rule assignments of the same names).
COMPOSITE_NAMES: tuple[str, ...] = (
    "epsilon",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
)

# Rules of a user-defined composite and the parameters each takes (spray.lrp.rules.RULES); zbox needs both bounds.
RULE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "zero": (),
    "epsilon": ("epsilon",),
    "gamma": ("gamma", "stabilizer"),
    "alpha_beta": ("alpha", "beta", "stabilizer"),
    "zplus": ("stabilizer",),
    "flat": ("stabilizer",),
    "wsquare": ("stabilizer",),
    "zbox": ("low", "high", "stabilizer"),
    "pass": (),
    "norm": ("stabilizer",),
    "gradient": (),
}
REQUIRED_RULE_PARAMETERS: dict[str, tuple[str, ...]] = {"zbox": ("low", "high")}

# Layer-type names a user-defined composite may use (spray.lrp.composites.LAYER_TYPE_NAMES); a torch.nn
# class name (``Conv2d``) is also accepted and checked when the engine is built.
LAYER_KINDS: tuple[str, ...] = ("conv", "linear", "activation", "avgpool", "maxpool", "sum", "batchnorm")

# Attribution methods (spray.lrp.methods.METHODS).
METHODS: tuple[str, ...] = ("lrp", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "occlusion")
