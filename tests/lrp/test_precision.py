"""Float32 accuracy of the engine against a float64 reference.

A model whose parameters are float64 is explained in float64 throughout, which gives the reference. The
ResNet-shaped test net has BatchNorm statistics measured on smooth image-like inputs (as a trained net's
are), so that folding BatchNorm leaves the large, mostly cancelling products of real networks: the case in
which forming a layer's output as ``z+ + z-`` (instead of the ordinary product) loses float32 precision.
"""

from typing import Any

import nets
import pytest
import torch
from torch import nn

from spray.lrp import LRP
from spray.lrp.engine import CHANNELS_LAST_TOLERANCE


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return smooth + 0.3 * torch.randn(n, 3, size, size, generator=generator)


@pytest.fixture(scope="module")
def calibrated_resnet() -> nn.Module:
    """A ResNet-18-shaped net whose BatchNorm statistics are those of its own activations."""
    torch.manual_seed(0)
    model = nets.init_weights(nets.resnet18(width=0.5, classes=10))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: the statistics of all calibration batches
    model.train()
    with torch.no_grad():
        model(_images(16, 64, seed=1))
    return model.eval()


def test_a_float64_model_is_explained_in_float64():
    model = nets.resnet18(width=0.25).double().eval()
    x = _images(2, 32, seed=2).double()
    logits, relevance = LRP(model, "epsilon_alpha2_beta1")(x, torch.tensor([0, 1]))
    assert logits.dtype == torch.float64 and relevance.dtype == torch.float64
    # float32 inputs to a float64 model are explained in float64 too.
    _, relevance32_input = LRP(model, "epsilon_alpha2_beta1")(x.float(), torch.tensor([0, 1]))
    assert relevance32_input.dtype == torch.float64


def test_alpha_beta_outputs_are_the_ordinary_forward_pass(calibrated_resnet):
    """The alpha-beta rule's shared product must not change the logits: the same as the plain forward
    pass of the epsilon composite (the BatchNorm-folded model), to float32 rounding of one product."""
    x, targets = _images(4, 64, seed=3), torch.arange(4)
    plain_logits, _ = LRP(calibrated_resnet, "epsilon_plus_flat")(x, targets)
    logits, _ = LRP(calibrated_resnet, "epsilon_alpha2_beta1")(x, targets)
    assert (logits - plain_logits).abs().max() <= 1e-6 * plain_logits.abs().max()


def _error_from_float64(model: nn.Module, composite: str, channels_last: bool) -> float:
    """``max |R_float32 - R_float64| / max |R_float64|`` of ``model`` (a calibrated ResNet-18 at half width)."""
    x, targets = _images(4, 64, seed=3), torch.arange(4)
    bounds: dict[str, Any] = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
    _, relevance = LRP(model, composite, channels_last=channels_last, **bounds)(x, targets)
    model64 = nets.resnet18(width=0.5, classes=10).double()
    model64.load_state_dict(model.state_dict())
    _, reference = LRP(model64.eval(), composite, **bounds)(x.double(), targets)
    return float((relevance.double() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("composite", ["epsilon_alpha2_beta1", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_float32_relevance_is_close_to_the_float64_reference(calibrated_resnet, composite):
    error = _error_from_float64(calibrated_resnet, composite, channels_last=False)
    assert error < 1e-5, f"{composite}: float32 relevance {error:.2e} x max|R| from the float64 reference"


@pytest.mark.parametrize("composite", ["epsilon_alpha2_beta1", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_channels_last_relevance_stays_within_its_documented_tolerance(calibrated_resnet, composite):
    """The channels-last format (the CPU default for conv nets) rounds differently from NCHW; it is held to
    CHANNELS_LAST_TOLERANCE x max|R|, the order of the plain path's and zennit's own error on a ResNet-18."""
    error = _error_from_float64(calibrated_resnet, composite, channels_last=True)
    assert error < CHANNELS_LAST_TOLERANCE, (
        f"{composite}: channels-last relevance {error:.2e} x max|R| from the float64 reference")


def test_alpha_beta_under_bf16_autocast_stays_close_to_float32():
    """Under autocast the shared product would give ``z- = z - z+`` in bf16, which cancels to noise; the
    rule must keep its denominators in float32 there (CPU autocast stands in for CUDA's)."""
    torch.manual_seed(0)
    model = nets.randomize_batchnorm(nets.init_weights(nets.resnet50(width=0.25, classes=10))).eval()
    x, targets = _images(2, 64, seed=4), torch.arange(2)
    _, reference = LRP(model, "epsilon_alpha2_beta1")(x, targets)
    _, relevance = LRP(model, "epsilon_alpha2_beta1", autocast="bf16")(x, targets)
    relative = (relevance - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
    assert relative.max() < 0.3, f"bf16 autocast relevance {relative.max():.2e} (relative L2) from float32"
