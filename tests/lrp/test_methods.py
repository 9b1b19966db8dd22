"""The other attribution methods behind the same interface, the user-defined composite from the config,
and the conservation figure."""

from typing import Any

import golden_models
import pytest
import torch
from torch import nn

from spray.config import LrpAttribution, attribution_config
from spray.lrp import METHODS, attributor, attributor_from_config


def _linear_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def _class_weights(model: nn.Sequential, targets: torch.Tensor) -> torch.Tensor:
    """The linear model's weights of each target class, shaped like one (3, 2, 2) input."""
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    return linear.weight.detach()[targets].view(len(targets), 3, 2, 2)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_the_lrp_call_signature(method: str) -> None:
    model, x = golden_models.make("batchnorm")
    params: dict[str, Any] = {"composite": "epsilon_plus_flat"} if method == "lrp" else {}
    if method in ("smoothgrad", "integrated_gradients"):
        params = {"samples": 2} if method == "smoothgrad" else {"steps": 2}
    explain = attributor(method, model, **params)
    logits, relevance = explain(x, torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 10) and relevance.shape == x.shape and relevance.dtype == torch.float32
    assert torch.isfinite(relevance).all() and explain.conservation.shape == (4,)
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)


def test_gradient_methods_on_a_linear_model_are_exact() -> None:
    # f(x) = w . x + b: gradient = w; gradient x input = w * x; integrated gradients from 0 = w * x.
    model = _linear_model()
    x = torch.randn(2, 3, 2, 2)
    targets = torch.tensor([1, 2])
    w = _class_weights(model, targets)
    assert torch.allclose(attributor("gradient", model)(x, targets)[1], w)
    assert torch.allclose(attributor("gradient_x_input", model)(x, targets)[1], w * x)
    assert torch.allclose(attributor("integrated_gradients", model, steps=3)(x, targets)[1], w * x, atol=1e-6)
    assert torch.allclose(attributor("smoothgrad", model, samples=3, noise=0.5)(x, targets)[1], w, atol=1e-6)


def test_occlusion_measures_the_logit_drop_of_each_patch() -> None:
    # 1 x 1 patches on a linear model: the drop when pixel (c, i, j) of all channels is zeroed is
    # sum_c w_c x_c at that pixel, spread evenly over the channels.
    model = _linear_model()
    x = torch.randn(2, 3, 2, 2)
    targets = torch.tensor([0, 2])
    w = _class_weights(model, targets)
    _, relevance = attributor("occlusion", model, patch=1)(x, targets)
    expected = (w * x).sum(1, keepdim=True).expand_as(x) / 3
    assert torch.allclose(relevance, expected, atol=1e-6)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attribution method"):
        attributor("deeplift", _linear_model())


def test_user_defined_composite_from_the_config() -> None:
    model, x = golden_models.make("plain")
    config = LrpAttribution.model_validate({
        "composite": "epsilon_plus_flat",
        "rules": [
            {"names": ["3"], "rule": "gamma", "gamma": 0.5},
            {"layers": ["linear"], "rule": "epsilon", "epsilon": 0.01},
        ],
    })
    explain = attributor_from_config(model, config)
    assert explain.composite_name == "custom+epsilon_plus_flat"
    assert explain.rules["0"] == "flat"  # from the named composite
    assert explain.rules["3"] == "gamma" and explain.rules["6"] == "zplus"
    assert explain.rules["11"] == "epsilon"
    _logits, relevance = explain(x, torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(relevance).all()


def test_config_rejects_an_unknown_rule_or_layer_type() -> None:
    with pytest.raises(ValueError, match="unknown LRP rule"):
        LrpAttribution.model_validate({"rules": [{"layers": ["conv"], "rule": "gama"}]})
    with pytest.raises(ValueError, match="unknown layer type"):
        LrpAttribution.model_validate({"rules": [{"layers": ["convolution"], "rule": "gamma"}]})


def test_config_methods_build_their_attributor() -> None:
    model, x = golden_models.make("plain")
    settings = {"gradient": {}, "smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 2},
                "occlusion": {"patch": 8}}
    for method, keys in settings.items():
        explain = attributor_from_config(model, attribution_config(method=method, **keys))
        assert explain.method == method
        assert explain(x, torch.tensor([0, 1, 2, 3]))[1].shape == x.shape


@pytest.mark.parametrize(("setting", "expected"), [("auto", torch.channels_last), (True, torch.channels_last),
                                                   (False, torch.contiguous_format)])
def test_the_memory_format_comes_from_attribution_channels_last(setting, expected) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    explain = attributor_from_config(model, LrpAttribution(channels_last=setting))
    assert explain.memory_format(torch.device("cpu")) == expected  # on CPU "auto" is channels-last
    _, relevance = explain(torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
    assert relevance.shape == (2, 1, 4, 4) and relevance.is_contiguous()


def test_config_rejects_an_unknown_channels_last_setting() -> None:
    with pytest.raises(ValueError, match="channels_last"):
        LrpAttribution.model_validate({"channels_last": "sometimes"})
