"""The LRP entry point as the pipeline uses it: shapes, metadata, errors, and the caller's model."""

import copy
from typing import Any

import golden_models
import pytest
import torch
from torch import nn

from spray import config
from spray.errors import ModelError
from spray.lrp import COMPOSITES, LRP


def test_composite_names_match_the_config_schema() -> None:
    assert COMPOSITES == config.COMPOSITE_NAMES


def test_call_returns_logits_and_float32_relevance_of_the_input_shape() -> None:
    model, x = golden_models.make("batchnorm")
    lrp = LRP(model, "epsilon_plus_flat")
    logits, relevance = lrp(x, torch.tensor([1, 2, 3, 4]))
    assert logits.shape == (4, 10) and not logits.requires_grad
    assert relevance.shape == x.shape and relevance.dtype == torch.float32 and not relevance.requires_grad
    assert lrp.conservation is not None and lrp.conservation.shape == (4,)


def test_folded_batchnorm_keeps_the_models_outputs() -> None:
    model, x = golden_models.make("batchnorm")
    logits, _ = LRP(model, "epsilon")(x, torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)


def test_the_callers_model_is_never_modified() -> None:
    model, x = golden_models.make("batchnorm")
    model.train()
    before = copy.deepcopy(model.state_dict())
    LRP(model, "epsilon_gamma_box", low=-3.0, high=3.0)(x, torch.zeros(4, dtype=torch.long))
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model[1], nn.BatchNorm2d)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_rules_name_every_layer_like_zennits_epsilon_plus_flat() -> None:
    model, _ = golden_models.make("batchnorm")
    lrp = LRP(model, "epsilon_plus_flat")
    assert lrp.composite_name == "epsilon_plus_flat"
    assert lrp.rules["0"] == "flat" and lrp.rules["1"] == "folded into 0"
    assert lrp.rules["2"] == "pass" and lrp.rules["3"] == "gradient"  # ReLU, MaxPool2d
    assert lrp.rules["4"] == "zplus" and lrp.rules["7"] == "norm"  # second conv, AvgPool2d
    assert lrp.rules["14"] == "epsilon" and lrp.rules["16"] == "epsilon"  # both linear layers


def test_epsilon_gamma_box_assigns_zbox_to_the_first_conv_and_gamma_to_the_others() -> None:
    model, _ = golden_models.make("plain")
    rules = LRP(model, "epsilon_gamma_box", low=golden_models.LOW, high=golden_models.HIGH).rules
    assert rules["0"] == "zbox" and rules["3"] == "gamma" and rules["6"] == "gamma" and rules["11"] == "epsilon"


def test_epsilon_gamma_box_requires_input_bounds() -> None:
    model, _ = golden_models.make("plain")
    with pytest.raises(ValueError, match="low= and high="):
        LRP(model, "epsilon_gamma_box")


def test_unknown_composite_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown composite"):
        LRP(golden_models.build("plain"), "epsilon_plus_flatt")


def test_unsupported_layer_is_named_with_its_type_and_a_fallback() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.LocalResponseNorm(2)),
        nn.Flatten(), nn.Linear(16, 2),
    )
    with pytest.raises(ModelError) as error:
        LRP(model, "epsilon_plus_flat")
    message = str(error.value)
    assert "'2.1'" in message and "LocalResponseNorm" in message and "gradient_x_input" in message


def test_unsupported_function_is_named_with_its_source_line() -> None:
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            h = self.conv(x)
            gate = torch.softmax(h, dim=1)  # the unsupported operation
            return (h * gate).flatten(1)

    with pytest.raises(ModelError) as error:
        LRP(Gated(), "epsilon")
    message = str(error.value)
    assert "softmax" in message and "test_api.py" in message and "gate = torch.softmax(h, dim=1)" in message


def test_untraceable_model_gets_a_model_error_with_a_fallback() -> None:
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.linear(x)
            return -self.linear(x)

    with pytest.raises(ModelError, match=r"torch\.fx"):
        LRP(Branching(), "epsilon")


def test_targets_must_match_the_batch_and_the_classes() -> None:
    model, x = golden_models.make("plain")
    lrp = LRP(model, "epsilon")
    with pytest.raises(ValueError, match="entries"):
        lrp(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets must lie"):
        lrp(x, torch.tensor([0, 1, 2, 10]))


def test_per_channel_bounds_broadcast_over_the_image() -> None:
    model, x = golden_models.make("plain")
    per_channel = LRP(model, "epsilon_gamma_box", low=golden_models.LOW, high=golden_models.HIGH)
    as_tensor = LRP(
        model, "epsilon_gamma_box",
        low=torch.tensor(golden_models.LOW).view(1, 3, 1, 1), high=torch.tensor(golden_models.HIGH).view(1, 3, 1, 1),
    )
    targets = torch.tensor([0, 1, 2, 3])
    assert torch.allclose(per_channel(x, targets)[1], as_tensor(x, targets)[1])


def test_autocast_keeps_relevance_float32_and_close_to_the_float32_run() -> None:
    # bf16 autocast works on CPU too; on CUDA it is the same code path.
    model, x = golden_models.make("batchnorm")
    targets = torch.tensor([0, 1, 2, 3])
    _, reference = LRP(model, "epsilon_plus_flat")(x, targets)
    logits, relevance = LRP(model, "epsilon_plus_flat", autocast="bf16")(x, targets)
    assert relevance.dtype == torch.float32 and logits.dtype == torch.float32
    error = (relevance - reference).abs().max() / reference.abs().max()
    assert error < 0.05, error  # bf16 keeps ~3 significant digits per layer


def test_engine_follows_the_input_to_its_device() -> None:
    model, x = golden_models.make("plain")
    lrp = LRP(model, "epsilon_plus_flat")
    lrp(x, torch.zeros(4, dtype=torch.long))
    device = "cuda" if torch.cuda.is_available() else "meta"
    if device == "meta":
        pytest.skip("no CUDA device here; the device run of the benchmark covers it")
    logits, relevance = lrp(x.to(device), torch.zeros(4, dtype=torch.long, device=device))
    assert relevance.device.type == "cuda" and logits.device.type == "cuda"


def test_engine_pickles_for_dask_workers() -> None:
    import pickle

    model, x = golden_models.make("batchnorm")
    lrp = LRP(model, "epsilon_gamma_box", low=golden_models.LOW, high=golden_models.HIGH)
    copy_ = pickle.loads(pickle.dumps(lrp))
    targets = torch.tensor([3, 2, 1, 0])
    assert copy_.rules == lrp.rules
    assert torch.equal(copy_(x, targets)[1], lrp(x, targets)[1])


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_channels_last_gives_the_same_relevance_in_nchw(composite: str) -> None:
    model, x = golden_models.make("batchnorm")
    bounds: dict[str, Any] = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
    targets = torch.tensor([1, 2, 3, 4])
    _, plain = LRP(model, composite, channels_last=False, **bounds)(x, targets)
    lrp = LRP(model, composite, channels_last=True, **bounds)
    _, relevance = lrp(x, targets)
    assert lrp.memory_format(x.device) == torch.channels_last and relevance.is_contiguous()
    torch.testing.assert_close(relevance, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def test_auto_runs_conv2d_nets_channels_last_on_cpu_only() -> None:
    model, _ = golden_models.make("batchnorm")
    lrp = LRP(model)  # channels_last="auto"
    assert lrp.memory_format(torch.device("cpu")) == torch.channels_last
    assert lrp.memory_format(torch.device("cuda")) == torch.contiguous_format
    assert LRP(model, channels_last=True).memory_format(torch.device("cuda")) == torch.channels_last
    assert LRP(model, channels_last=False).memory_format(torch.device("cpu")) == torch.contiguous_format
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert LRP(mlp, "epsilon").memory_format(torch.device("cpu")) == torch.contiguous_format
    with pytest.raises(ValueError, match="channels_last"):
        LRP(model, channels_last="yes")  # type: ignore[arg-type]


def test_layer_outputs_and_their_relevance_come_back_nchw() -> None:
    model, x = golden_models.make("batchnorm")
    layer = next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))
    output, explained = LRP(model).at_layer(x, layer, relevance=lambda out: out.clamp(min=0))
    assert output.is_contiguous() and explained is not None and explained.is_contiguous()
    reference, expected = LRP(model, channels_last=False).at_layer(x, layer, relevance=lambda out: out.clamp(min=0))
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))
    assert expected is not None
    torch.testing.assert_close(explained, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_a_pickled_engine_leaves_its_weight_caches_behind_and_explains_alike() -> None:
    import pickle

    model, x = golden_models.make("batchnorm")
    lrp = LRP(model, "epsilon_gamma_box", low=-3.0, high=3.0)
    targets = torch.tensor([1, 2, 3, 4])
    _, relevance = lrp(x, targets)  # fills the per-layer caches (stacked weights, z^B bound products)
    fresh = pickle.loads(pickle.dumps(LRP(model, "epsilon_gamma_box", low=-3.0, high=3.0)))
    assert len(pickle.dumps(lrp)) < 1.2 * len(pickle.dumps(fresh))
    torch.testing.assert_close(pickle.loads(pickle.dumps(lrp))(x, targets)[1], relevance)


def test_a_layer_output_is_what_the_layer_computed_although_its_relu_runs_in_place() -> None:
    """Under z+ a conv keeps nothing of its output, so the ReLU after it overwrites that output in place;
    ``at_layer`` still sees the conv's output with its negative values, as the plain model computes it."""
    model, x = golden_models.make("plain")
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    captured: list[torch.Tensor] = []
    handle = dict(model.named_modules())[names[1]].register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    output, _ = LRP(model, "epsilon_plus_flat").at_layer(x, names[1])
    assert (output < 0).any()
    torch.testing.assert_close(output, captured[0], rtol=1e-4, atol=1e-5 * float(captured[0].abs().max()))
