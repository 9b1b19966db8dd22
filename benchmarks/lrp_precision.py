"""Float32 precision of spray's LRP against a float64 reference, in NCHW and in the channels-last layout
(``NHWC``: the default on CPU for nets with 2-D convolutions, ``attribution.channels_last: auto``).

    .venv/bin/python benchmarks/lrp_precision.py [--size 224] [--batch 2] [--cases resnet18,vgg16]
        [--inputs smooth|noise]

A model whose parameters are float64 is explained in float64 throughout (spray.lrp.LRP), which is the
reference. Prints, per case, composite and memory layout, ``max |R_float32 - R_float64| / max |R_float64|``
over the batch. Cases: ``resnet18``, a ResNet-18-shaped net whose BatchNorm statistics are measured on its
own activations (as a trained net's are, the set-up of tests/lrp/test_precision.py at full width);
``vgg16``, the randomly initialised VGG-16-shaped net of benchmarks/lrp_speed.py (no BatchNorm to calibrate:
a harder case). Inputs: ``smooth`` image-like noise (default) or ``noise``, the standard normal inputs of
benchmarks/lrp_speed.py, on which the random VGG-16-shaped net has many nearly cancelling denominators.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "lrp")]

import nets  # noqa: E402  (the plain-torch test architectures)

from spray.lrp import LRP  # noqa: E402

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def images(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return smooth + 0.3 * torch.randn(n, 3, size, size, generator=generator)


def build(case: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    if case == "vgg16":
        return nets.randomize_batchnorm(nets.init_weights(nets.VGG16(classes=1000))).eval()
    if case != "resnet18":
        raise SystemExit(f"unknown case {case!r}; expected resnet18 or vgg16")
    model = nets.init_weights(nets.resnet18(classes=10))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: the statistics of all calibration batches
    model.train()
    with torch.no_grad():
        model(images(8, size, seed=1))
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="resnet18,vgg16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--inputs", choices=("smooth", "noise"), default="smooth")
    args = parser.parse_args(argv)
    print(f"{'model':9s} {'composite':22s} {'NCHW':>9s} {'NHWC':>9s}   (max |R32 - R64| / max |R64|)")
    for case in [c for c in args.cases.split(",") if c]:
        model = build(case, args.size)
        reference_model = copy.deepcopy(model).double()
        if args.inputs == "smooth":
            x = images(args.batch, args.size, seed=3)
        else:
            x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        targets = torch.zeros(args.batch, dtype=torch.long)
        for composite in COMPOSITES:
            bounds: dict[str, Any] = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
            reference = LRP(reference_model, composite, **bounds)(x.double(), targets)[1]
            errors = []
            for channels_last in (False, True):
                relevance = LRP(model, composite, channels_last=channels_last, **bounds)(x, targets)[1]
                errors.append(float((relevance.double() - reference).abs().max() / reference.abs().max()))
            print(f"{case:9s} {composite:22s} {errors[0]:9.1e} {errors[1]:9.1e}", flush=True)


if __name__ == "__main__":
    main()
