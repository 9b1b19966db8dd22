"""Memory of the flagging stage for one large class: streamed from disk against the class held in memory.

    python benchmarks/flag_memory.py [--n-images 1300] [--side 224] [--clusters 4] [--recipients 200]
                                     [--batch-size 64] [--json PATH]

Data: ``--n-images`` RGB JPEGs of ``--side`` x ``--side`` pixels (default: one ImageNet class, 1,300 images
at 224 x 224), smooth random blobs, a quarter of them with a bright square in the top-left corner, plus
``--recipients`` images of "other classes". The model is a small CNN (a strided conv, global pooling and a
linear layer; random weights, seeded): the stage's memory is the images', not the model's. The relevance
maps are synthetic (32 x 32, the planted quarter brighter in the corner) and split into ``--clusters``
spectral clusters, the planted quarter being one of them.

Two runs, each in a fresh process, score the same clusters with ``spray.flag.score_clusters``:

- ``whole class``: what the flagging stage did before it streamed: decode the whole class into one
  (N, H, W, C) float32 array (``spray.data.load_pixels``) and score from it;
- ``streamed``: what it does now: the class decoded batch by batch from disk, twice
  (``spray.data.iter_pixel_batches``, 2 decoding threads).

Printed per run: wall seconds, the process's peak resident memory (VmHWM) and the part of it added by the
stage (peak minus the resident memory just before scoring), with the ratio to the whole-class run, and
whether both runs flagged the same clusters with the same evidence.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _memory import peak_rss_mb, rss_mb  # benchmarks/_memory.py (scripts run from benchmarks/)

REPOSITORY = Path(__file__).resolve().parents[1]
MAP_SIDE = 32


def make_class(folder: Path, n_images: int, n_recipients: int, side: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    planted = np.arange(n_images) < n_images // 4
    corner = side // 8
    for number in range(n_images + n_recipients):
        coarse = rng.uniform(0, 180, size=(8, 8, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BILINEAR)).copy()
        if number < n_images and planted[number]:
            image[:corner, :corner] = 255
        name = f"class_{number:05d}.jpg" if number < n_images else f"other_{number - n_images:05d}.jpg"
        Image.fromarray(image).save(folder / name, quality=90)
    maps = rng.uniform(0, 0.1, size=(n_images, MAP_SIDE, MAP_SIDE)).astype(np.float32)
    maps[:, 12:20, 12:20] += 0.5
    maps[planted, :4, :4] += 1.0
    np.save(folder / "maps.npy", maps)


def _model(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 8, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 10),
    )


def run_one(folder: Path, mode: str, side: int, clusters: int, batch_size: int, seed: int) -> dict[str, Any]:
    """One run, in this process: returns seconds, memory and the evidence."""
    import torch

    from spray.config import FlaggingConfig, ImageConfig
    from spray.data import Sample, iter_pixel_batches, load_pixels
    from spray.flag import array_batches, score_clusters

    torch.set_num_threads(1)
    image = ImageConfig(mode="RGB", size=(side, side), mean=[0.5], std=[0.25])
    maps = np.load(folder / "maps.npy")
    n = len(maps)
    members = [Sample(f"c/{i}", folder / f"class_{i:05d}.jpg", 0) for i in range(n)]
    others = sorted(folder.glob("other_*.jpg"))
    labels = np.where(np.arange(n) < n // 4, 0, 1 + np.arange(n) % (clusters - 1))
    model = _model(seed)
    recipients, _, _ = load_pixels([Sample(p.name, p, 1) for p in others], image)
    before = rss_mb()
    started = time.perf_counter()
    if mode == "whole class":
        pixels, _, _ = load_pixels(members, image)
        batches = array_batches(pixels, batch_size)
    else:
        def batches():
            for batch in iter_pixel_batches(members, image, batch_size, workers=2):
                yield batch.pixels
    scored = score_clusters(model, 0, batches, maps, labels, recipients, image, FlaggingConfig(seed=seed))
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    return {
        "mode": mode, "n_images": n, "side": side, "seconds": seconds, "peak_memory_mb": peak,
        "stage_memory_mb": peak - before,
        "clusters": [{"id": s.id, "flagged": s.flagged, "score": s.score} for s in scored],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1300)
    parser.add_argument("--recipients", type=int, default=200)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the runs as JSON here")
    parser.add_argument("--_run", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run:
        result = run_one(Path(args._run[0]), args._run[1], args.side, args.clusters, args.batch_size, args.seed)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="spray-flag-memory-") as temporary:
        folder = Path(temporary)
        started = time.perf_counter()
        make_class(folder, args.n_images, args.recipients, args.side, args.seed)
        print(f"wrote {args.n_images} + {args.recipients} images of {args.side} x {args.side} in "
              f"{time.perf_counter() - started:.0f} s")
        runs = []
        for mode in ("whole class", "streamed"):
            command = [sys.executable, __file__, "--_run", str(folder), mode, "--side", str(args.side),
                       "--clusters", str(args.clusters), "--batch-size", str(args.batch_size),
                       "--seed", str(args.seed)]
            output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPOSITORY).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))

    baseline = runs[0]
    data_mb = args.n_images * args.side * args.side * 3 * 4 / 2**20
    print(f"\nflagging one class of {args.n_images} images ({data_mb:.0f} MB as float32), {args.clusters} clusters, "
          f"batch size {args.batch_size}")
    print(f"{'run':<12} {'seconds':>8} {'peak MB':>8} {'stage MB':>9} {'stage vs whole':>15}")
    for run in runs:
        print(f"{run['mode']:<12} {run['seconds']:>8.1f} {run['peak_memory_mb']:>8.0f} {run['stage_memory_mb']:>9.0f} "
              f"{run['stage_memory_mb'] / baseline['stage_memory_mb']:>14.2f}x")
    same = runs[0]["clusters"] == runs[1]["clusters"] or all(
        a["id"] == b["id"] and a["flagged"] == b["flagged"] and abs(a["score"] - b["score"]) < 1e-4
        for a, b in zip(runs[0]["clusters"], runs[1]["clusters"]))
    print(f"same flags and scores (within 1e-4): {same}; flagged: "
          f"{[c['id'] for c in runs[1]['clusters'] if c['flagged']]}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "same_result": same}, indent=2))


if __name__ == "__main__":
    main()
