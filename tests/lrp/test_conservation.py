"""Conservation on every test architecture: with zero biases and the epsilon rule (small epsilon) the
input relevance sums to the explained logit within 1e-3 relative; the LRP graph computes the same
logits as the model (BatchNorm folded, functional skips and concatenations traced)."""

import nets
import pytest
import torch

from spray.lrp import LRP, Composite

ARCHITECTURES = {
    "vgg16": (lambda: nets.VGG16(width=1 / 16, pool=1, hidden=256), 32),
    "resnet18": (lambda: nets.resnet18(width=1 / 8), 32),
    "resnet50": (lambda: nets.resnet50(width=1 / 16), 32),
    "densenet": (lambda: nets.DenseNet(width=1 / 4, blocks=(2, 3, 2)), 32),
    "mobilenetv2": (lambda: nets.MobileNetV2(width=1 / 4), 32),
}


def _explain(name: str, composite: str | Composite = "epsilon", **params):
    build, size = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = nets.zero_biases(nets.randomize_batchnorm(nets.init_weights(build()), zero_shift=True))
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    lrp = LRP(model, composite, **params)
    with torch.no_grad():
        expected_logits = model(x)
    targets = expected_logits.argmax(1)
    logits, relevance = lrp(x, targets)
    return lrp, model, x, targets, logits, relevance, expected_logits


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_epsilon_rule_conserves_relevance_with_zero_biases(name: str) -> None:
    lrp, _, _, targets, logits, relevance, expected = _explain(name, epsilon=1e-9, stabilizer=1e-9)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    explained = logits.gather(1, targets[:, None]).squeeze(1)
    total = relevance.flatten(1).sum(1)
    assert torch.all((total - explained).abs() <= 1e-3 * explained.abs()), (total, explained)
    assert torch.allclose(lrp.conservation, torch.ones(3), atol=1e-3)


def test_resnet_skips_are_split_not_copied() -> None:
    lrp, *_ = _explain("resnet18", epsilon=1e-9, stabilizer=1e-9)
    adds = [name for name, rule in lrp.rules.items() if name.startswith("add")]
    assert len(adds) == 8 and all(lrp.rules[name] == "norm" for name in adds)
    assert lrp.rules["layer1.0.bn1"] == "folded into layer1.0.conv1"
    assert lrp.rules["layer2.0.downsample.1"] == "folded into layer2.0.downsample.0"


def test_densenet_preactivation_batchnorm_passes_relevance() -> None:
    lrp, *_ = _explain("densenet", epsilon=1e-9, stabilizer=1e-9)
    assert lrp.rules["norm0"] == "folded into conv0"
    assert lrp.rules["blocks.0.0.norm1"] == "pass"  # BN -> ReLU -> conv: nothing to fold into


def test_mobilenet_depthwise_relu6_and_mean() -> None:
    lrp, *_ = _explain("mobilenetv2", epsilon=1e-9, stabilizer=1e-9)
    assert lrp.rules["features.3.conv.3"] == "epsilon"  # depthwise conv
    assert lrp.rules["features.2"] == "pass"  # ReLU6
    assert lrp.rules["mean"] == "norm"


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_zplus_flat_and_gamma_conserve_on_a_chain_without_skips(composite: str) -> None:
    lrp, *_ = _explain("vgg16", composite, epsilon=1e-9, stabilizer=1e-9, low=-3.0, high=3.0)
    assert torch.allclose(lrp.conservation, torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
@pytest.mark.parametrize("name", ["resnet50", "densenet", "mobilenetv2"])
def test_every_composite_runs_on_every_graph(name: str, composite: str) -> None:
    # Only the epsilon rule promises conservation through skips: a summand that is negative reaches a
    # conv whose z+ (positive part) is 0 and its relevance is dropped, as in zennit; alpha-beta amplifies.
    _, _, _, _, logits, relevance, expected = _explain(name, composite, low=-3.0, high=3.0)
    assert torch.isfinite(relevance).all()
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_conservation_figure_exposes_a_skip_explained_by_the_plain_gradient() -> None:
    # What zennit does on a hand-built ResNet: the gradient of `a + b` copies the relevance to both
    # branches, so every skip multiplies the total. The per-batch figure makes that visible.
    from spray.lrp import custom_composite

    naive = custom_composite([{"layers": ["sum"], "rule": "gradient"}], base="epsilon", epsilon=1e-9, stabilizer=1e-9)
    lrp, *_ = _explain("resnet18", naive)
    assert lrp.rules["add"] == "gradient"
    assert torch.all(lrp.conservation > 1.5), lrp.conservation
