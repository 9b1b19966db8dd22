"""spray's LRP agrees with zennit 0.5.1 (golden outputs from make_golden.py, zennit not needed here).

Criterion of the issue: max |spray - zennit| <= 1e-4 * max |zennit| in float32, for every named
composite, on the same sequential CNN, weights and input, with and without BatchNorm.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import golden_models
from spray.lrp import COMPOSITES, LRP

GOLDEN = np.load(Path(__file__).parent / "golden" / "zennit_0.5.1.npz")


def _model(variant: str):
    model = golden_models.build(variant).eval()
    prefix = f"{variant}/state/"
    state = {k[len(prefix):]: torch.from_numpy(GOLDEN[k]) for k in GOLDEN.files if k.startswith(prefix)}
    model.load_state_dict(state)
    return model, torch.from_numpy(GOLDEN[f"{variant}/input"])


@pytest.mark.parametrize("variant", golden_models.VARIANTS)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_relevance_matches_zennit(variant: str, composite: str) -> None:
    model, x = _model(variant)
    targets = torch.from_numpy(GOLDEN["targets"])
    lrp = LRP(model, composite, low=golden_models.LOW, high=golden_models.HIGH)
    logits, relevance = lrp(x, targets)
    expected = torch.from_numpy(GOLDEN[f"{variant}/{composite}"])
    assert relevance.dtype == torch.float32 and relevance.shape == x.shape
    assert torch.allclose(logits, torch.from_numpy(GOLDEN[f"{variant}/logits"]), atol=1e-5)
    error = (relevance - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= 1e-4 * scale, f"max |diff| {error:.3g} > 1e-4 * max |R| ({scale:.3g})"


def test_golden_file_is_small() -> None:
    size = sum(p.stat().st_size for p in (Path(__file__).parent / "golden").iterdir())
    assert size < 1_000_000
