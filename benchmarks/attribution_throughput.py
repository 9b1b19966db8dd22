"""Images/s of spray's whole attribution stage against the same model's plain forward + backward.

    .venv/bin/python benchmarks/attribution_throughput.py [--cases resnet50,vgg16] [--batch 8] [--batches 3]
        [--composite epsilon_plus_flat] [--workers 4] [--device cpu|cuda] [--quick] [--json out.json]

The stage, as ``spray.attribute.attribute_shard`` runs it: JPEG decode -> resize/crop (``shorter_side`` 256,
centre crop 224x224, as torchvision's ImageNet transform) -> normalise -> copy to the device -> forward ->
LRP backward -> relevance back to the host -> store (a chunked zarr array, full resolution) ; plus the
downsize to 32x32 that the preprocessing stage does next. The JPEGs are made here (500x375, quality 90,
smooth random content; no downloads), in a temporary folder.

Two measurements per case, on the same device and batch:

- *pipelined*: the stage end to end with ``--workers`` decoding threads prefetching batches while the model
  runs (``spray.data.iter_pixel_batches``, as the audit does), images/s over all batches after a warm-up,
  in ``--rounds`` rounds interleaved with a baseline call;
- *where the time goes*: every step timed on its own, serially (decode in the calling thread, then
  normalise, H2D copy, forward, backward, D2H + store, downsize), seconds per batch.

The baseline is the plain forward + backward of the input gradient with the batch already on the device
(``benchmarks/lrp_speed.py``'s "gradient"), in the memory format the engine runs the net in (channels-last
on CPU by default, ``attribution.channels_last: auto``; the faster format for the gradient too on the CPUs
measured, benchmarks/lrp_speed.py); ``x baseline`` is the stage's images/s over the baseline's.
On CUDA the script also runs bf16 autocast and channels_last, and reports the GPU's utilisation (the share
of the pipelined wall time that the model's own calls took, synchronised), since ``nvidia-smi`` sampling is
too coarse for runs of seconds. Set ``OMP_WAIT_POLICY=PASSIVE`` (done below if unset) on shared cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests" / "lrp")]

import nets  # noqa: E402
from lrp_speed import gradient_method  # noqa: E402

from spray.attribute import to_device  # noqa: E402
from spray.cache import create_stored_array  # noqa: E402
from spray.config import ImageConfig  # noqa: E402
from spray.data import Sample, iter_pixel_batches, to_model_input  # noqa: E402
from spray.lrp import LRP  # noqa: E402
from spray.preprocess import downsize  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
T = TypeVar("T")


@dataclass
class Row:
    """One case and variant: images/s of the stage and of the baseline, and seconds per batch by step."""

    model: str
    device: str
    variant: str
    batch: int
    images_per_s: float
    baseline_images_per_s: float
    vs_baseline: float
    decode_s: float
    normalise_s: float
    h2d_s: float
    forward_s: float
    backward_s: float
    store_s: float
    downsize_s: float
    model_busy: float


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Sample]:
    """``count`` 500x375 RGB JPEGs of smooth random content (quality 90) in ``folder``."""
    generator = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        coarse = generator.random((12, 16, 3))
        image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((500, 375), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.float32) + generator.normal(0, 12, (375, 500, 3))
        path = folder / f"img{index:05d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        samples.append(Sample(id=path.name, path=path, label=0))
    return samples


def build_model(name: str, quick: bool) -> torch.nn.Module:
    width = 0.25 if quick else 1.0
    model: torch.nn.Module
    if name == "resnet50":
        model = nets.resnet50(width=width, classes=1000)
    elif name == "vgg16":
        model = nets.VGG16(width=width, classes=1000, hidden=1024 if quick else 4096)
    else:
        raise SystemExit(f"unknown case {name!r}; expected resnet50 or vgg16")
    return nets.randomize_batchnorm(nets.init_weights(model)).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def pipelined(samples: list[Sample], image: ImageConfig, engine: LRP, device: torch.device, batch: int,
              workers: int, store_dir: Path) -> tuple[float, float]:
    """Images/s of the stage end to end as the audit runs it, and the share of the time in model calls."""
    store = create_stored_array(store_dir, "relevance", (len(samples), 3, *image.size), batch)
    written, busy = 0, 0.0
    _sync(device)
    start = time.perf_counter()
    for pixels in iter_pixel_batches(samples, image, batch, workers):
        x = to_device(to_model_input(pixels.pixels, image), device)
        targets = torch.zeros(len(x), dtype=torch.long, device=device)
        seconds, (_, relevance) = _timed(lambda: engine(x, targets), device)
        busy += seconds
        host = relevance.cpu().numpy()
        store[written : written + len(host)] = host
        downsize(host.sum(1), (32, 32))
        written += len(host)
    _sync(device)
    elapsed = time.perf_counter() - start
    return written / elapsed, busy / elapsed


def steps(samples: list[Sample], image: ImageConfig, engine: LRP, device: torch.device, batch: int,
          store_dir: Path) -> dict[str, float]:
    """Median seconds per batch of each step, timed serially."""
    store = create_stored_array(store_dir, "relevance_steps", (len(samples), 3, *image.size), batch)
    times: dict[str, list[float]] = {k: [] for k in ("decode", "normalise", "h2d", "forward", "backward",
                                                      "store", "downsize")}
    decoded = iter_pixel_batches(samples, image, batch, workers=0)
    written = 0
    while True:
        seconds, pixels = _timed(lambda: next(decoded, None), device)
        if pixels is None:
            break
        times["decode"].append(seconds)
        seconds, x = _timed(lambda: to_model_input(pixels.pixels, image), device)
        times["normalise"].append(seconds)
        seconds, x = _timed(lambda: to_device(x, device), device)
        times["h2d"].append(seconds)
        targets = torch.zeros(len(x), dtype=torch.long, device=device)
        forward_s, _ = _timed(lambda: _forward_only(engine, x), device)
        total_s, (_, relevance) = _timed(lambda: engine(x, targets), device)
        times["forward"].append(forward_s)
        times["backward"].append(max(total_s - forward_s, 0.0))

        def store_batch() -> np.ndarray:
            host = relevance.cpu().numpy()
            store[written : written + len(host)] = host
            return host

        seconds, host = _timed(store_batch, device)
        times["store"].append(seconds)
        written += len(host)
        seconds, _ = _timed(lambda: downsize(host.sum(1), (32, 32)), device)
        times["downsize"].append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def _forward_only(engine: LRP, x: torch.Tensor) -> torch.Tensor:
    """The LRP graph's forward pass with autograd recording, as the engine runs it, without the backward."""
    inputs = x.detach().to(engine.dtype).contiguous(memory_format=engine.memory_format(x.device))
    inputs.requires_grad_(True)
    with torch.enable_grad():
        if engine.autocast is not None:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return engine._module(inputs)
        return engine._module(inputs)


def baseline(model: torch.nn.Module, x: torch.Tensor, channels_last: bool) -> Callable[[], float]:
    """A function timing one plain forward + backward of the input gradient (the batch already on the
    device; in the channels-last memory format with ``channels_last``) and returning its images/s."""
    gradient = gradient_method(model.to(x.device), channels_last=channels_last)
    targets = torch.zeros(len(x), dtype=torch.long, device=x.device)
    gradient(x, targets)  # warm-up
    return lambda: len(x) / _timed(lambda: gradient(x, targets), x.device)[0]


def variants(device: torch.device) -> list[tuple[str, str | None, bool | Literal["auto"]]]:
    """(name, autocast, channels_last) to run: the defaults everywhere; bf16 autocast and channels_last on
    CUDA (where the default is NCHW)."""
    if device.type != "cuda":
        return [("fp32", None, "auto")]
    return [("fp32", None, "auto"), ("bf16 autocast", "bf16", "auto"), ("fp32 channels_last", None, True)]


def run_case(name: str, args: argparse.Namespace, samples: list[Sample], image: ImageConfig,
             device: torch.device, work: Path) -> list[Row]:
    model = build_model(name, args.quick)
    rows = []
    for variant, autocast, channels_last in variants(device):
        engine = LRP(model, args.composite, autocast=autocast, low=-2.2, high=2.7, channels_last=channels_last)
        warm = to_device(to_model_input(next(iter_pixel_batches(samples, image, args.batch, 0)).pixels, image),
                         device)
        engine(warm, torch.zeros(len(warm), dtype=torch.long, device=device))  # warm-up
        time_baseline = baseline(model, warm, engine.memory_format(device) == torch.channels_last)
        stage: list[float] = []
        base: list[float] = []
        busy: list[float] = []
        for _ in range(args.rounds):  # interleaved, so that background load hits both alike
            images_per_s, model_busy = pipelined(samples, image, engine, device, args.batch, args.workers, work)
            stage.append(images_per_s)
            busy.append(model_busy)
            base.append(time_baseline())
        ratio = statistics.median(a / b for a, b in zip(stage, base))
        per_step = steps(samples, image, engine, device, args.batch, work)
        rows.append(Row(name, str(device), variant, args.batch, statistics.median(stage), statistics.median(base),
                        ratio, per_step["decode"], per_step["normalise"], per_step["h2d"], per_step["forward"],
                        per_step["backward"], per_step["store"], per_step["downsize"], statistics.median(busy)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="resnet50,vgg16")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="batches of JPEGs per case")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds: stage over all batches, "
                        "then one baseline call (medians; the ratio is the median of within-round ratios)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="quarter-width models, 2 batches: a smoke test")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches = min(args.batches, 2)
    device = torch.device(args.device)
    image = ImageConfig(mode="RGB", size=(224, 224), shorter_side=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", {torch.get_num_threads()} threads, {args.workers} decoding threads, batch {args.batch}, "
          f"composite {args.composite}")
    print(f"{'model':9s} {'variant':19s} {'img/s':>7s} {'base img/s':>10s} {'x base':>6s} | seconds per batch: "
          f"{'decode':>6s} {'norm':>6s} {'h2d':>6s} {'fwd':>6s} {'bwd':>6s} {'store':>6s} {'down':>6s} | "
          f"{'model busy':>10s}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="spray-throughput-") as tmp:
        work = Path(tmp)
        (work / "jpegs").mkdir()
        samples = make_jpegs(work / "jpegs", args.batch * args.batches)
        for case in [c for c in args.cases.split(",") if c]:
            for row in run_case(case, args, samples, image, device, work):
                rows.append(row)
                print(f"{row.model:9s} {row.variant:19s} {row.images_per_s:7.2f} {row.baseline_images_per_s:10.2f} "
                      f"{row.vs_baseline:6.2f} |                    {row.decode_s:6.3f} {row.normalise_s:6.3f} "
                      f"{row.h2d_s:6.3f} {row.forward_s:6.3f} {row.backward_s:6.3f} {row.store_s:6.3f} "
                      f"{row.downsize_s:6.3f} | {row.model_busy:10.0%}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
