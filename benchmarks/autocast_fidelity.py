"""How faithful relevance stays when the forward pass runs under autocast (bf16, and fp16 on CUDA).

    .venv/bin/python benchmarks/autocast_fidelity.py [--device cpu] [--size 112] [--batch 4] [--demo]

Part 1, same inputs: relevance of a ResNet-50- and a VGG-16-shaped net (quarter width, ``--size`` pixels,
smooth image-like inputs) with ``autocast`` against the float32 run, for the composites epsilon_plus_flat,
epsilon_gamma_box and epsilon_alpha2_beta1. Per sample: Pearson correlation of the maps, relative error
``||R_amp - R_fp32|| / ||R_fp32||`` and the largest difference over ``max |R_fp32|``; the table shows the
worst sample.

Part 2 (``--demo``): the demo audit (``pipelines/demo.yaml``, built into a temporary folder) run twice, float32
and with ``attribution.autocast: bf16``, and compared: the adjusted Rand index of every class's clusters and
whether the same clusters are flagged with the same members.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "lrp")]

import nets  # noqa: E402

from spray.lrp import LRP  # noqa: E402

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return smooth + 0.3 * torch.randn(n, 3, size, size, generator=generator)


def compare(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float, float]:
    """Worst sample's (correlation, relative L2 error, max difference / max |reference|)."""
    a, b = reference.flatten(1).double(), other.flatten(1).double()
    centred_a, centred_b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    correlation = (centred_a * centred_b).sum(1) / (centred_a.norm(dim=1) * centred_b.norm(dim=1))
    relative = (a - b).norm(dim=1) / a.norm(dim=1)
    peak = (a - b).abs().amax(1) / a.abs().amax(1)
    return float(correlation.min()), float(relative.max()), float(peak.max())


def same_inputs(device: torch.device, size: int, batch: int, dtypes: list[str]) -> None:
    print(f"{'model':9s} {'composite':22s} {'autocast':8s} {'min corr':>9s} {'max rel err':>11s} "
          f"{'max |dR|/max|R|':>15s}")
    x = images(batch, size).to(device)
    for name, build in (("resnet50", lambda: nets.resnet50(width=0.25, classes=100)),
                        ("vgg16", lambda: nets.VGG16(width=0.25, classes=100, hidden=512))):
        model = nets.randomize_batchnorm(nets.init_weights(build())).eval().to(device)
        with torch.no_grad():
            targets = model(x).argmax(1)
        for composite in COMPOSITES:
            bounds = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
            _, reference = LRP(model, composite, **bounds)(x, targets)
            for dtype in dtypes:
                _, relevance = LRP(model, composite, autocast=dtype, **bounds)(x, targets)
                correlation, relative, peak = compare(reference, relevance)
                print(f"{name:9s} {composite:22s} {dtype:8s} {correlation:9.4f} {relative:11.3f} {peak:15.3f}",
                      flush=True)


def run_demo(folder: Path, autocast: str | None) -> Path:
    """Run the demo audit with ``autocast`` into ``folder``; the report folder."""
    config = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    case = folder / "demo-case"
    config["demo"]["directory"] = str(case)
    config["model"]["weights"] = str(case / "model.pt")
    config["data"]["manifest"] = str(case / "images" / "manifest.csv")
    config["attribution"]["autocast"] = autocast
    config["cache"]["directory"] = str(folder / "cache")
    config["output"] = str(folder / f"report-{autocast or 'fp32'}")
    path = folder / f"demo-{autocast or 'fp32'}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "spray", "run", str(path)], check=True, capture_output=True)
    return Path(config["output"])


def clusters(report: Path) -> tuple[dict[str, tuple[str, str]], set[tuple[str, frozenset]]]:
    """``{sample id: (class, cluster)}`` from samples.csv and the flagged clusters' member sets."""
    with open(report / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assignment = {row["id"]: (row["class"], row["cluster"]) for row in rows}
    flagged: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        if row.get("flagged", "").lower() in ("true", "1", "yes"):
            flagged.setdefault((row["class"], row["cluster"]), set()).add(row["id"])
    return assignment, {(key[0], frozenset(ids)) for key, ids in flagged.items()}


def demo() -> None:
    from sklearn.metrics import adjusted_rand_score

    with tempfile.TemporaryDirectory(prefix="spray-autocast-") as tmp:
        fp32 = clusters(run_demo(Path(tmp), None))
        bf16 = clusters(run_demo(Path(tmp), "bf16"))
    ids = sorted(fp32[0])
    classes = sorted({fp32[0][i][0] for i in ids})
    worst = min(
        adjusted_rand_score([fp32[0][i][1] for i in ids if fp32[0][i][0] == c],
                            [bf16[0][i][1] for i in ids if fp32[0][i][0] == c])
        for c in classes
    )
    print(f"demo audit, fp32 vs bf16 autocast: worst per-class ARI of the clusters {worst:.3f}; "
          f"flagged clusters fp32 {len(fp32[1])}, bf16 {len(bf16[1])}, identical members: {fp32[1] == bf16[1]}")
    print(json.dumps({"worst_ari": worst, "flagged_fp32": len(fp32[1]), "flagged_bf16": len(bf16[1]),
                      "same_flags": fp32[1] == bf16[1]}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--demo", action="store_true", help="also compare the demo audit's clusters and flags")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtypes = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    print(f"torch {torch.__version__}, device {device}, inputs {args.batch}x3x{args.size}x{args.size}")
    same_inputs(device, args.size, args.batch, dtypes)
    if args.demo:
        demo()


if __name__ == "__main__":
    main()
