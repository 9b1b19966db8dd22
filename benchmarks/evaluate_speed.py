"""Region perturbation: spray.evaluate against Quantus' RegionPerturbation on the same work, in one run.

Same model (a small VGG-shaped CNN, seeded), images, attributions, patch grid, most-relevant-first order and
black baseline; every patch of every image is destroyed (``steps`` = all patches). spray forms all steps of a
batch of images as one forward pass; Quantus runs one forward pass of the batch per step. Quantus runs in its
own venv (an oracle, never a dependency), as a subprocess of this script; rounds are interleaved.

    python benchmarks/evaluate_speed.py --quantus-python /work/quantus-venv/bin/python

(make that venv as tests/quantus_golden.py says). Prints seconds per round, images/s and the ratio, and
checks that the two curves agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    channels = 3
    for width in (16, 32, 64):
        layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(),
                   torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        channels = width
    layers += [torch.nn.Flatten(), torch.nn.LazyLinear(10)]
    model = torch.nn.Sequential(*layers)
    model(torch.zeros(1, 3, 64, 64))
    return model.eval()


def inputs(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n, 3, size, size)).astype(np.float32)
    x[:, 0, 0, 0] = 0.0  # Quantus' black baseline is each image's minimum
    return x, rng.integers(10, size=n), rng.normal(size=(n, 1, size, size)).astype(np.float32)


def run_quantus(n: int, size: int, patch: int, out: Path) -> None:
    import quantus

    x, targets, attributions = inputs(n, size)
    steps = (size // patch) ** 2
    metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=steps, order="morf",
                                        perturb_baseline="black", normalise=False, abs=False,
                                        disable_warnings=True)
    model = build_model()
    start = time.perf_counter()
    curves = metric(model=model, x_batch=x, y_batch=targets, a_batch=attributions, softmax=False,
                    device="cpu", channel_first=True, batch_size=n)
    seconds = time.perf_counter() - start
    np.save(out, np.asarray(curves))
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "version": quantus.__version__}))


def run_spray(n: int, size: int, patch: int, batch_size: int) -> tuple[float, np.ndarray]:
    from spray.evaluate import RegionPerturbation, class_score, perturbation_curves

    x, targets, attributions = inputs(n, size)
    params = RegionPerturbation(patch_size=patch, steps=(size // patch) ** 2, perturbation="constant", low=0.0)
    model = build_model()
    start = time.perf_counter()
    curves = perturbation_curves(class_score(model, targets), x, attributions[:, 0], params, "morf",
                                 batch_size=batch_size)
    return time.perf_counter() - start, curves[:, :1] - curves[:, 1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantus-python", required=True, help="python of a venv with quantus and torch")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quantus-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quantus_worker:
        run_quantus(args.images, args.size, args.patch, args.out)
        return 0
    spray_times, quantus_times = [], []
    agreement = 0.0
    version = "?"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "quantus.npy"
        for _ in range(args.rounds):
            seconds, spray_curves = run_spray(args.images, args.size, args.patch, args.batch_size)
            spray_times.append(seconds)
            subprocess.run([args.quantus_python, __file__, "--quantus-python", args.quantus_python,
                            "--quantus-worker", "--out", str(out), "--images", str(args.images),
                            "--size", str(args.size), "--patch", str(args.patch)], check=True)
            record = json.loads(out.with_suffix(".json").read_text())
            quantus_times.append(record["seconds"])
            version = record["version"]
            agreement = float(np.abs(spray_curves - np.load(out)).max())
    steps = (args.size // args.patch) ** 2
    work = args.images * (steps + 1)
    spray_s, quantus_s = statistics.median(spray_times), statistics.median(quantus_times)
    print(f"region perturbation, {args.images} images {args.size}x{args.size} RGB, {steps} patches of "
          f"{args.patch}x{args.patch}, a 6-conv VGG-shaped CNN, CPU ({torch.get_num_threads()} threads), "
          f"median of {args.rounds} interleaved rounds")
    print("| tool | seconds | perturbed images/s | Quantus time / this |")
    print("|---|---|---|---|")
    print(f"| Quantus {version} RegionPerturbation | {quantus_s:.2f} | {work / quantus_s:.0f} | 1.0x |")
    print(f"| spray.evaluate (batch {args.batch_size}) | {spray_s:.2f} | {work / spray_s:.0f} | "
          f"{quantus_s / spray_s:.2f}x |")
    print(f"max |spray - Quantus| over the curves: {agreement:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
