"""Write zennit's relevance for the golden tests to tests/lrp/golden/zennit_<version>.npz.

Run in a separate venv (zennit pulls in torchvision and a CUDA build of torch), never in CI::

    python3 -m venv /work/zennit-venv
    /work/zennit-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 zennit==0.5.1   # or 1.0.0
    /work/zennit-venv/bin/python tests/lrp/make_golden.py

For each model variant of golden_models.py and each composite: the model's state_dict, the input, the
targets, the logits and zennit's input relevance of the target logit seeded with the logit's value
(output gradient = one-hot * logit), with zennit's SequentialMergeBatchNorm canonizer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon
from zennit.types import Convolution

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import golden_models  # noqa: E402


def composites(low: torch.Tensor, high: torch.Tensor) -> dict:
    def canon():
        return [SequentialMergeBatchNorm()]

    return {
        # zennit has no composite named 'epsilon'; spray's is the base map plus epsilon on conv and linear.
        "epsilon": lambda: LayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, Epsilon(1e-6)), (torch.nn.Linear, Epsilon(1e-6))],
            canonizers=canon(),
        ),
        "epsilon_plus": lambda: EpsilonPlus(canonizers=canon()),
        "epsilon_plus_flat": lambda: EpsilonPlusFlat(canonizers=canon()),
        "epsilon_gamma_box": lambda: EpsilonGammaBox(low=low, high=high, canonizers=canon()),
        "epsilon_alpha2_beta1": lambda: EpsilonAlpha2Beta1(canonizers=canon()),
        "epsilon_alpha2_beta1_flat": lambda: EpsilonAlpha2Beta1Flat(canonizers=canon()),
    }


def main() -> None:
    from importlib.metadata import version

    zennit_version = version("zennit")
    low = torch.tensor(golden_models.LOW).view(1, 3, 1, 1)
    high = torch.tensor(golden_models.HIGH).view(1, 3, 1, 1)
    targets = torch.tensor(golden_models.TARGETS)
    arrays: dict[str, Any] = {"targets": targets.numpy()}
    for variant in golden_models.VARIANTS:
        model, x = golden_models.make(variant)
        for key, value in model.state_dict().items():
            arrays[f"{variant}/state/{key}"] = value.numpy()
        arrays[f"{variant}/input"] = x.numpy()
        with torch.no_grad():
            arrays[f"{variant}/logits"] = model(x).numpy()
        for name, make_composite in composites(low, high).items():
            composite = make_composite()
            with composite.context(model) as modified:
                inputs = x.clone().requires_grad_(True)
                output = modified(inputs)
                seed = torch.zeros_like(output)
                seed[torch.arange(len(targets)), targets] = output[torch.arange(len(targets)), targets].detach()
                (relevance,) = torch.autograd.grad(output, inputs, seed)
            arrays[f"{variant}/{name}"] = relevance.numpy()
            total = relevance.flatten(1).sum(1) / output[torch.arange(len(targets)), targets]
            print(f"{variant:10s} {name:28s} max|R|={relevance.abs().max():.4g} sum/logit={total.tolist()}")
        # the canonizer must have restored the model
        with torch.no_grad():
            assert torch.allclose(model(x), torch.from_numpy(arrays[f"{variant}/logits"]))
    out = HERE / "golden" / f"zennit_{zennit_version}.npz"
    out.parent.mkdir(exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB), torch {torch.__version__}")


if __name__ == "__main__":
    main()
