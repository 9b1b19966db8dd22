"""A Conv/Linear layer or a residual sum applies the ReLU after it itself, and explains from ``relu(z)``, only
where relevance is zero wherever that ReLU's output is zero; the relevance is the same as without it."""

from typing import Any

import nets
import pytest
import torch
from torch import nn

import spray.lrp.ops
from spray.lrp import LRP, custom_composite, named_composite
from spray.lrp.graph import build_lrp_graph

COMPOSITES = ("epsilon", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat")
BOX: dict[str, Any] = {"low": -4.0, "high": 4.0}


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    build = {"resnet18": lambda: nets.resnet18(width=1 / 8), "vgg16": lambda: nets.VGG16(width=1 / 16, pool=1,
                                                                                      hidden=64)}[name]
    return nets.randomize_batchnorm(nets.init_weights(build())).eval()


def _inputs() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _explain(model: nn.Module, composite, monkeypatch: pytest.MonkeyPatch | None = None, **params):
    """The relevance, and with ``monkeypatch`` the relevance with no layer applying its ReLU itself."""
    lrp = LRP(model, composite, **params)
    x, targets = _inputs(), torch.tensor([0, 1])
    relevance = lrp(x, targets)[1]
    if monkeypatch is None:
        return relevance
    with monkeypatch.context() as patch:
        patch.setattr(spray.lrp.ops, "rectifying", lambda: False)
        plain = lrp(x, targets)[1]
    return relevance, plain


def _rectified_nodes(model: nn.Module, composite) -> set[str]:
    gm, _ = build_lrp_graph(model, composite)
    return {str(node.target) for node in gm.graph.nodes if node.kwargs.get("rectify")}


@pytest.mark.parametrize(("name", "composite"), [("resnet18", c) for c in COMPOSITES] + [("vgg16", "epsilon_gamma_box")])
def test_layers_applying_their_relu_explain_as_the_plain_path(name: str, composite: str, monkeypatch) -> None:
    params = BOX if composite == "epsilon_gamma_box" else {}
    relevance, plain = _explain(_net(name), composite, monkeypatch, **params)
    assert relevance.abs().max() > 0
    torch.testing.assert_close(relevance, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))


def test_every_relu_followed_by_multiplying_rules_is_applied_by_its_layer() -> None:
    rectified = _rectified_nodes(_net("resnet18"), named_composite("epsilon_gamma_box", **BOX))
    # the stem and each block's first conv (their ReLUs feed convs, pooling and sums), and every sum
    assert {"conv1", "layer1.0.conv1", "layer4.1.conv1"} <= rectified
    assert sum(target.startswith("add") for target in rectified) == 8
    # a block's last conv feeds the sum, not a ReLU: its relevance may be non-zero where its output is < 0
    assert "layer1.0.conv2" not in rectified


def test_a_sum_is_written_into_a_summand_only_a_z_plus_layer_computed() -> None:
    """Under z+ a block's last conv keeps nothing of its output, so the rectified sum overwrites it (the
    relevance is checked against the plain path above); gamma keeps it, so the sum gets its own tensor."""
    def overwritten(composite) -> set[str]:
        gm, _ = build_lrp_graph(_net("resnet18"), composite)
        return {str(node.target) for node in gm.graph.nodes if node.kwargs.get("overwrite") is not None}

    assert len(overwritten(named_composite("epsilon_plus_flat"))) == 8
    assert overwritten(named_composite("epsilon_gamma_box", **BOX)) == set()


def test_a_relu_whose_zeros_may_receive_relevance_is_left_alone(monkeypatch) -> None:
    """The flat rule spreads relevance over all inputs, zeros included: the ReLU before such a layer keeps
    its own step, and so does one whose output is the model's output."""
    model = _net("vgg16")
    composite = custom_composite([{"names": ["features.2"], "rule": "flat"}], base="epsilon_gamma_box", **BOX)
    rectified = _rectified_nodes(model, composite)
    assert "features.0" not in rectified and "features.5" in rectified
    relevance, plain = _explain(model, composite, monkeypatch)
    torch.testing.assert_close(relevance, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))

    ending_in_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten())
    assert _rectified_nodes(ending_in_relu, named_composite("epsilon")) == {"0"}


def test_relevance_seeded_at_a_relu_output_reaches_its_zeros(monkeypatch) -> None:
    """``at_layer`` may seed relevance where a ReLU's output is zero: there no layer applies its ReLU itself,
    so a conv explains its negative outputs too (with the gamma rule's weights for z < 0)."""
    lrp, x = LRP(_net("vgg16"), "epsilon_gamma_box", **BOX), _inputs()
    output, relevance = lrp.at_layer(x, "features.3", torch.ones_like)
    with monkeypatch.context() as patch:
        patch.setattr(spray.lrp.ops, "rectifying", lambda: False)
        _, expected = lrp.at_layer(x, "features.3", torch.ones_like)
    assert relevance is not None and expected is not None and (output == 0).any()
    torch.testing.assert_close(relevance, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
