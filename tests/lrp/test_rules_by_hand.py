"""Each rule against a hand-computed example on a two-layer network.

Network: ``x (3) -> Linear W1 (2x3), no bias -> ReLU -> Linear W2 = [1, 0.5] (1x2), no bias``. The rule
under test is given to the first layer; the second gets LRP-0, so the hidden relevance is
``R_h = h * w2`` (the output relevance is the logit itself). Every expected value below is worked out
in the comment next to it.
"""

import pytest
import torch
from torch import nn

from spray.lrp import LRP, custom_composite

W1 = [[1.0, -2.0, 1.0], [2.0, 1.0, -1.0]]
W2 = [[1.0, 0.5]]


def two_layer(bias1=(0.0, 0.0)) -> nn.Sequential:
    first, second = nn.Linear(3, 2), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor(W1))
        first.bias.copy_(torch.tensor(bias1))
        second.weight.copy_(torch.tensor(W2))
    return nn.Sequential(first, nn.ReLU(), second)


def explain(net: nn.Module, x: list[float], rule: str, **params) -> torch.Tensor:
    composite = custom_composite(
        [{"names": ["0"], "rule": rule, **params}, {"names": ["2"], "rule": "zero"}]
    )
    lrp = LRP(net, composite)
    assert lrp.rules["0"] == rule and lrp.rules["1"] == "pass"
    _, relevance = lrp(torch.tensor([x]), torch.tensor([0]))
    return relevance[0]


# x = [2, 1, 1]: z1 = [2 - 2 + 1, 4 + 1 - 1] = [1, 4] = h; y = 1 + 0.5 * 4 = 3; R_h = [1 * 1, 4 * 0.5] = [1, 2].
POSITIVE_CASES = {
    # sum_k x_j w_jk / z_k R_k: k0 [2, -2, 1] / 1 * 1; k1 [4, 1, -1] / 4 * 2 = [2, .5, -.5]
    "zero": ({}, [4.0, -1.5, 0.5]),
    # eps = 1: k0 [2, -2, 1] / 2 * 1 = [1, -1, .5]; k1 [4, 1, -1] / 5 * 2 = [1.6, .4, -.4]
    "epsilon": ({"epsilon": 1.0}, [2.6, -0.6, 0.1]),
    # x w+: k0 [2, 0, 1] / 3 * 1; k1 [4, 1, 0] / 5 * 2 = [1.6, .4, 0]
    "zplus": ({}, [2 / 3 + 1.6, 0.4, 1 / 3]),
    # gamma = .5, x (w + .5 w+): k0 [3, -2, 1.5] / 2.5 * 1 = [1.2, -.8, .6]; k1 [6, 1.5, -1] / 6.5 * 2
    "gamma": ({"gamma": 0.5}, [1.2 + 12 / 6.5, -0.8 + 3 / 6.5, 0.6 - 2 / 6.5]),
    # alpha 2, beta 1: k0 2 [2, 0, 1] / 3 - [0, -2, 0] / -2 = [4/3, -1, 2/3]; k1 (2 [4, 1, 0] / 5 - [0, 0, 1]) * 2
    "alpha_beta": ({"alpha": 2.0, "beta": 1.0}, [4 / 3 + 3.2, -1 + 0.8, 2 / 3 - 2.0]),
    # equal shares: k0 1/3 each; k1 2/3 each
    "flat": ({}, [1.0, 1.0, 1.0]),
    # w^2: k0 [1, 4, 1] / 6 * 1; k1 [4, 1, 1] / 6 * 2
    "wsquare": ({}, [1.5, 1.0, 0.5]),
    # l = -1, h = 3: k0 x w - l w+ - h w- = [2 + 1, -2 + 6, 1 + 1] = [3, 4, 2] / 9 * 1;
    #                k1 [4 + 2, 1 + 1, -1 + 3] = [6, 2, 2] / 10 * 2
    "zbox": ({"low": -1.0, "high": 3.0}, [1 / 3 + 1.2, 4 / 9 + 0.4, 2 / 9 + 0.4]),
}


@pytest.mark.parametrize("rule", list(POSITIVE_CASES))
def test_rule_on_positive_input(rule: str) -> None:
    params, expected = POSITIVE_CASES[rule]
    relevance = explain(two_layer(), [2.0, 1.0, 1.0], rule, **params)
    assert torch.allclose(relevance, torch.tensor(expected), atol=1e-5), relevance


# x = [2, -1, 1]: z1 = [2 + 2 + 1, 4 - 1 - 1] = [5, 2] = h; y = 5 + 1 = 6; R_h = [5, 1].
NEGATIVE_CASES = {
    # a+ w+ and a- w- count: k0 [2, (-1)(-2), 1] = [2, 2, 1] / 5 * 5; k1 [4, 0, 0] / 4 * 1
    "zplus": ({}, [3.0, 2.0, 1.0]),
    # gamma .5, z > 0: a+ (w + .5 w+), a- (w + .5 w-): k0 [3, 3, 1.5] / 7.5 * 5 = [2, 2, 1];
    #                  k1 [2 * 3, -1 * 1, 1 * -1] = [6, -1, -1] / 4 * 1
    "gamma": ({"gamma": 0.5}, [3.5, 1.75, 0.75]),
    # alpha 2, beta 1: k0 positive [2, 2, 1] / 5, negative none -> 2 [2, 2, 1] / 5 * 5 = [4, 4, 2];
    #   k1 positive [4, 0, 0] / 4, negative: a- w+ = -1 * 1, a+ w- = 1 * -1 -> [0, -1, -1] / -2
    #   -> (2 [1, 0, 0] - [0, .5, .5]) * 1 = [2, -.5, -.5]
    "alpha_beta": ({"alpha": 2.0, "beta": 1.0}, [6.0, 3.5, 1.5]),
}


@pytest.mark.parametrize("rule", list(NEGATIVE_CASES))
def test_rule_on_input_with_negative_values(rule: str) -> None:
    params, expected = NEGATIVE_CASES[rule]
    relevance = explain(two_layer(), [2.0, -1.0, 1.0], rule, **params)
    assert torch.allclose(relevance, torch.tensor(expected), atol=1e-5), relevance


def test_epsilon_rule_lets_the_bias_absorb_its_share() -> None:
    # b1 = [1, 0]: z1 = [2, 4], y = 2 + 2 = 4, R_h = [2, 2]; k0: [2, -2, 1] / 2 * 2 = [2, -2, 1] (bias keeps 1);
    # k1: [4, 1, -1] / 4 * 2 = [2, .5, -.5]
    relevance = explain(two_layer(bias1=(1.0, 0.0)), [2.0, 1.0, 1.0], "zero")
    assert torch.allclose(relevance, torch.tensor([4.0, -1.5, 0.5]), atol=1e-6)


def test_zplus_counts_only_the_positive_bias() -> None:
    # b1 = [1, -1]: z1 = [2, 3], y = 3.5, R_h = [2, 1.5]; k0: x w+ = [2, 0, 1] + b+ 1 -> / 4 * 2 = [1, 0, .5];
    # k1: [4, 1, 0], b- ignored -> / 5 * 1.5 = [1.2, .3, 0]
    relevance = explain(two_layer(bias1=(1.0, -1.0)), [2.0, 1.0, 1.0], "zplus")
    assert torch.allclose(relevance, torch.tensor([2.2, 0.3, 0.5]), atol=1e-6)


def test_pass_rule_and_norm_rule_on_pooling_and_sums() -> None:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AvgPool1d(2)

        def forward(self, x):  # x (1, 1, 2)
            pooled = self.pool(x).flatten(1)  # (x0 + x1) / 2
            return torch.relu(pooled + pooled * 3.0)

    # x = [1, 3]: pooled 2, sum 2 + 6 = 8 (logit): the add splits 8 into 2 (left) and 6 (the scaled branch,
    # which passes 6 unchanged through the scalar product); pooled gets 8 and splits it 1 : 3 -> [2, 6].
    lrp = LRP(Net(), "epsilon")
    logits, relevance = lrp(torch.tensor([[[1.0, 3.0]]]), torch.tensor([0]))
    assert logits.item() == pytest.approx(8.0)
    assert torch.allclose(relevance, torch.tensor([[[2.0, 6.0]]]), atol=1e-5)
    assert lrp.rules["pool"] == "norm" and lrp.rules["add"] == "norm" and lrp.rules["relu"] == "pass"
