"""The deep-feature lens (analysis.space: features): clusters of a layer's activations, explained at the input."""

from __future__ import annotations

import html
import json
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_cases import audit_demo_case, tiny_config, write_config
from scipy.ndimage import binary_dilation
from torch import nn

from spray.analysis.features import check_layer, leaf_layers
from spray.cli import main
from spray.config import config_from_dict
from spray.demo import artifact_mask
from spray.errors import EXIT_MODEL, ConfigError, ModelError
from spray.lrp import LRP
from spray.report.schema import validate_summary


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        flatten=nn.Flatten(), hidden=nn.Linear(4 * 8 * 8, 6), act=nn.ReLU(), head=nn.Linear(6, 3)))
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(module.bias)  # no relevance absorbed by biases: conservation is exact
    return net


def test_the_lens_needs_a_layer_and_lrp(tmp_path):
    def load(**sections):
        return config_from_dict(tiny_config(tmp_path, **sections), base_dir=tmp_path)

    assert load(analysis={"space": "features", "layer": "4"}).analysis.layer == "4"
    with pytest.raises(ConfigError, match=r"give analysis\.layer"):
        load(analysis={"space": "features"})
    with pytest.raises(ConfigError, match=r"applies to analysis\.space: features"):
        load(analysis={"layer": "4"})
    with pytest.raises(ConfigError, match=r"needs attribution\.method lrp, not 'gradient'"):
        load(analysis={"space": "features", "layer": "4"}, attribution={"method": "gradient"})


def test_an_unknown_layer_is_named_with_near_names_and_a_container_with_its_layers():
    net = _net()
    assert leaf_layers(net) == ["features.0", "features.1", "flatten", "hidden", "act", "head"]
    check_layer(net, "hidden")
    with pytest.raises(ModelError, match=r"'hiden' is not a layer of the model; near names: 'hidden'"):
        check_layer(net, "hiden")
    with pytest.raises(ModelError, match=r"'features' is a container \(Sequential\).*features\.0, features\.1"):
        check_layer(net, "features")
    with pytest.raises(ModelError, match=r"its last layers are .*'head'"):
        check_layer(net, "classifier.9")


def test_relevance_seeded_at_a_layer_reaches_the_input_conserved():
    net = _net()
    x = torch.rand(5, 1, 8, 8)
    captured = []
    net.hidden.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
    net(x)
    lrp = LRP(net, "epsilon")
    output, none = lrp.at_layer(x, "hidden")
    assert none is None and torch.allclose(output, captured[0], atol=1e-6)
    seed = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    _, relevance = lrp.at_layer(x, "hidden", lambda out: seed)
    assert relevance is not None and relevance.shape == x.shape
    # epsilon rules without biases conserve: the input receives what the layer was given
    assert torch.allclose(relevance.sum((1, 2, 3)), seed.sum(1), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        lrp.at_layer(x, "nope")


def test_threads_sharing_one_engine_each_get_their_own_layer_output():
    lrp = LRP(_net(), "epsilon")
    inputs = [torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n)) for n in (2, 3, 5, 7)]
    expected = [lrp.at_layer(x, "hidden")[0] for x in inputs]

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [lrp.at_layer(x, "hidden", lambda out: torch.ones_like(out))[0] for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(run, inputs))
    for got, want in zip(outputs, expected):
        assert all(torch.equal(output, want) for output in got)


def test_validate_names_a_layer_the_model_does_not_have(tiny_case, capsys):
    config = tiny_config(tiny_case, analysis={"space": "features", "layer": "linear"})
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_MODEL
    error = capsys.readouterr().err
    assert "analysis.layer 'linear' is not a layer of the model" in error and "'4'" in error


@pytest.mark.e2e
def test_a_planted_artifact_separates_in_feature_space_and_its_explanation_lands_on_it(tmp_path):
    demo = {"artifact": "tag", "position": "top-left", "target_class": 7, "fraction": 0.2, "seed": 11,
            "variants": 1, "epochs": 4}  # a smaller, faster case than the demo's
    # the last convolution block's pooled output (64 x 4 x 4): where the network still knows where
    outcome, manifest = audit_demo_case(tmp_path, demo, [7], analysis={"space": "features", "layer": "8"})
    assert outcome.stages["features"] == {"computed": 1, "cached": 0} == outcome.stages["lens"]
    planted = set(manifest.loc[manifest.artifact == 1, "path"])
    (result,) = outcome.classes
    spectral = {c.id: set(np.asarray(result.ids)[np.asarray(result.cluster_labels) == c.id]) for c in result.clusters}
    best = max(result.clusters, key=lambda c: len(spectral[c.id] & planted))
    caught = len(spectral[best.id] & planted)
    assert caught / len(spectral[best.id]) >= 0.9 and caught / len(planted) >= 0.9  # one cluster, the planted ones
    assert best.flagged and best.neon is not None
    positive = np.clip(best.neon.mean_map, 0, None)
    near = binary_dilation(artifact_mask("tag", "top-left"), iterations=2)  # the tag and 2 pixels around it
    assert positive[near].sum() / positive.sum() >= 0.5 > near.mean() * 5
    summary = json.loads((Path(outcome.report).parent / "summary.json").read_text())
    validate_summary(summary)
    assert summary["classes"][0]["notes"][0].startswith("lens: clusters of the activations of layer '8'")
    assert summary["run"]["config"]["analysis"]["space"] == "features"
    (stored,) = [c for c in summary["classes"][0]["clusters"] if c["id"] == best.id]
    assert stored["neon"]["layer"] == "8" and best.neon.layer == "8"
    assert "at layer '8'" in html.unescape((Path(outcome.report).parent / "index.html").read_text())
