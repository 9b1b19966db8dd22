"""Quantus' RegionPerturbation on a small model, written to tests/golden/quantus_<version>.npz.

Run in a separate venv (Quantus is an oracle, never a dependency of spray)::

    python3 -m venv /work/quantus-venv
    /work/quantus-venv/bin/pip install torch==2.13.0 quantus==0.6.0
    /work/quantus-venv/bin/python tests/quantus_golden.py

The test (tests/test_evaluate.py) imports ``build_model`` and ``inputs`` from here without Quantus.
Quantus' curve is ``f(x^0) - f(x^k)`` for ``k = 1..regions_evaluation``, on logits (``softmax=False``), with a
black baseline (each image's minimum, 0 here) on a centred grid of ``PATCH_SIZE`` patches; the attributions have no ties, so the
most-relevant-first order is the same whichever sort breaks them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PATCH_SIZE = 8
REGIONS = 6
GOLDEN = Path(__file__).resolve().parent / "golden"


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 4),
    ).eval()


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (5, 3, 20, 20) in [0, 1], targets (5,), attributions (5, 1, 20, 20)); 20 is not a multiple of 8,
    so the grid's edge patches are cut."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 3, 20, 20)).astype(np.float32)
    x[:, 0, 0, 0] = 0.0  # Quantus' "black" is each image's minimum: make it the data range's 0
    targets = np.array([0, 1, 2, 3, 1])
    attributions = rng.normal(size=(5, 1, 20, 20)).astype(np.float32)
    return x, targets, attributions


def main() -> None:
    import quantus

    x, targets, attributions = inputs()
    metric = quantus.RegionPerturbation(patch_size=PATCH_SIZE, regions_evaluation=REGIONS, order="morf",
                                        perturb_baseline="black", normalise=False, abs=False,
                                        disable_warnings=True)
    curves = metric(model=build_model(), x_batch=x, y_batch=targets, a_batch=attributions, softmax=False,
                    device="cpu", channel_first=True)
    GOLDEN.mkdir(exist_ok=True)
    path = GOLDEN / f"quantus_{quantus.__version__}.npz"
    np.savez(path, curves=np.asarray(curves, dtype=np.float64), patch_size=PATCH_SIZE, regions=REGIONS)
    print(f"wrote {path}: curves {np.asarray(curves).shape}")


if __name__ == "__main__":
    main()
