"""A whole-dataset audit of a synthetic many-class dataset, on the local scheduler and on a LocalCluster.

The dataset: ``--classes`` classes (default 50) of 32x32 greyscale PNGs, ``--n-images`` in all (default
50,000), written to a temporary folder by ``--writers`` processes. Each class is a bar at a class-specific
height and slant plus noise; a quarter of class 0 carries a small bright watermark in the bottom-right
corner, so the audit has a Clever Hans cluster to find. A small CNN (two conv layers, about 10k weights) is
trained on them for ``--epochs`` epochs (seeded).

The audit then runs twice from an empty cache, with the same config: on the local threaded scheduler
(``--workers`` threads) and on a ``distributed.LocalCluster`` of ``--workers`` single-threaded worker
processes. For each run it prints, per stage, the wall time from the stage's first task start to its last
task end, the images per second over that span (stages overlap, because classes move through the graph
independently), the summed task time, and the peak resident memory of every process (psutil, sampled every
0.1 s). Torch uses one thread per task in both runs, so that the runs compare scheduling, not BLAS threads.

    python benchmarks/audit_scale.py [--n-images 50000] [--classes 50] [--workers 2] [--embedding tsne]
                                     [--skip-local | --skip-cluster] [--json results.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 32
MODEL_SOURCE = '''
from torch import nn


def build(n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, n_classes),
    )
'''
STAGES = ("attribute", "preprocess", "analyse", "embed", "flag")


# ------------------------------------------------------------------------------------------------ data


def _draw(label: int, number: int, n_classes: int, watermark: bool, seed: int) -> np.ndarray:
    """One (32, 32) uint8 image of class ``label``: a bar whose height and slant encode the class."""
    rng = np.random.default_rng((seed, label, number))
    image = rng.uniform(0, 60, size=(SIZE, SIZE))
    row = 3 + (label * 26) // max(n_classes - 1, 1)
    slant = (label % 5) - 2
    start = int(rng.integers(2, 10))
    for x in range(start, start + 18):
        y = row + (slant * (x - start)) // 9 + int(rng.integers(-1, 2))
        image[max(0, y - 1) : y + 2, x] = 230
    if watermark:
        image[26:30, 26:30] = 255
        image[27:29, 27:29] = 0
    return image.astype(np.uint8)


def _write_chunk(args: tuple[Path, list[tuple[int, int, bool]], int, int]) -> None:
    from PIL import Image

    folder, items, n_classes, seed = args
    for label, number, watermark in items:
        pixels = _draw(label, number, n_classes, watermark, seed)
        # compress_level=1: a fifth of the default's encoding time for 32x32 images, a few bytes larger
        Image.fromarray(pixels).save(folder / f"c{label:03d}" / f"{number:05d}.png", compress_level=1)


def make_dataset(folder: Path, n_images: int, n_classes: int, writers: int, seed: int) -> Path:
    """Write the PNGs and manifest.csv; returns the manifest's path."""
    per_class = [n_images // n_classes + (1 if c < n_images % n_classes else 0) for c in range(n_classes)]
    rng = np.random.default_rng(seed)
    items, rows = [], ["path,label,artifact"]
    for label, count in enumerate(per_class):
        (folder / f"c{label:03d}").mkdir(parents=True, exist_ok=True)
        marked = set(rng.choice(count, size=count // 4, replace=False).tolist()) if label == 0 else set()
        for number in range(count):
            items.append((label, number, number in marked))
            rows.append(f"c{label:03d}/{number:05d}.png,{label},{int(number in marked)}")
    chunks = [items[i : i + 2000] for i in range(0, len(items), 2000)]
    with ProcessPoolExecutor(max_workers=max(1, writers)) as pool:
        list(pool.map(_write_chunk, [(folder, chunk, n_classes, seed) for chunk in chunks]))
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def train_model(folder: Path, manifest: Path, n_classes: int, epochs: int, seed: int) -> Path:
    """Train the small CNN on (at most 20,000 of) the images; returns the weight file."""
    import torch
    from PIL import Image

    (folder / "models.py").write_text(MODEL_SOURCE)
    namespace: dict[str, Any] = {}
    exec(MODEL_SOURCE, namespace)
    torch.manual_seed(seed)
    model = namespace["build"](n_classes)
    lines = manifest.read_text().splitlines()[1:]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(lines), size=min(len(lines), 20_000), replace=False)
    rows = [lines[i].split(",") for i in chosen]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(manifest.parent / path), np.float32) / 255
                                   for path, _, _ in rows]))[:, None]
    y = torch.tensor([int(label) for _, label, _ in rows])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 128):
            batch = order[start : start + 128]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    print(f"model: training accuracy {accuracy:.1%} on {len(x)} images, {epochs} epoch(s)")
    torch.save(model.state_dict(), folder / "model.pt")
    return folder / "model.pt"


# ----------------------------------------------------------------------------------------------- timing


class StageTimes:
    """Task start/end times by stage (the prefix of the task's key, e.g. ``attribute-3-0-ab12cd34``)."""

    def __init__(self) -> None:
        self.tasks: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}

    def add(self, key: Any, start: float, stop: float) -> None:
        name = key[0] if isinstance(key, tuple) else str(key)
        stage = name.split("-")[0]
        if stage in self.tasks:
            self.tasks[stage].append((start, stop))

    def rows(self, n_images: int) -> dict[str, dict[str, float]]:
        out = {}
        for stage, spans in self.tasks.items():
            if not spans:
                continue
            wall = max(stop for _, stop in spans) - min(start for start, _ in spans)
            task_s = sum(b - a for a, b in spans)
            out[stage] = {"tasks": len(spans), "wall_s": wall, "task_s": task_s,
                          "images_per_s": n_images / wall if wall > 0 else float("inf"),
                          "images_per_task_s": n_images / task_s if task_s > 0 else float("inf")}
        return out

    def span(self) -> float:
        """Seconds from the first task's start to the last task's end."""
        spans = [span for spans in self.tasks.values() for span in spans]
        return max(b for _, b in spans) - min(a for a, _ in spans) if spans else 0.0


class LocalTimer:
    """A dask local-scheduler callback recording every task's start and end."""

    def __init__(self, times: StageTimes) -> None:
        from dask.callbacks import Callback

        started: dict[Any, float] = {}

        def pretask(key, dsk, state):
            started[key] = time.time()

        def posttask(key, result, dsk, state, worker_id):
            times.add(key, started.pop(key, time.time()), time.time())

        self.callback = Callback(pretask=pretask, posttask=posttask)


class MemorySampler:
    """Peak RSS of this process and of its descendants (cluster workers), sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.psutil, self.interval = psutil, interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = self.psutil.Process()
        while not self._stop.is_set():
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss / 2**20
                    label = "main" if process.pid == me.pid else _label(process)
                except self.psutil.Error:
                    continue
                previous = self.peaks.get(process.pid, (label, 0.0))[1]
                self.peaks[process.pid] = (label, max(previous, rss))
            self._stop.wait(self.interval)

    def rows(self) -> list[dict[str, Any]]:
        # helper processes (multiprocessing's resource tracker) stay below 50 MB; they are not worth a row
        return [{"pid": pid, "process": label, "peak_rss_mb": peak}
                for pid, (label, peak) in sorted(self.peaks.items()) if peak >= 50]


def _label(process: Any) -> str:
    command = " ".join(process.cmdline())
    if "resource_tracker" in command:
        return "tracker"
    # LocalCluster's worker processes are the only other descendants (its nannies run in this process)
    return "worker" if "python" in process.name() else process.name()


# ------------------------------------------------------------------------------------------------ audit


def audit_config(folder: Path, manifest: Path, weights: Path, n_classes: int, name: str, embedding: list[str],
                 address: str | None, workers: int) -> Any:
    from spray.config import config_from_dict

    raw = {
        "model": {"factory": str(folder / "models.py") + ":build", "kwargs": {"n_classes": n_classes},
                  "weights": str(weights)},
        "data": {"manifest": str(manifest), "image": {"mode": "L", "size": [SIZE, SIZE]}},
        "attribution": {"batch_size": 128, "shard_size": 512, "loader_workers": 2, "device": "cpu"},
        "embedding": {"methods": embedding},
        "cache": {"directory": str(folder / f"cache-{name}")},
        "output": str(folder / f"report-{name}"),
        "dask": {"address": address, "workers": workers},
    }
    return config_from_dict(raw, base_dir=folder)


def run_local(folder: Path, manifest: Path, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from spray.pipeline import run_audit

    torch.set_num_threads(1)
    config = audit_config(folder, manifest, weights, args.classes, "local", args.embedding, None, args.workers)
    times = StageTimes()
    with MemorySampler() as memory, LocalTimer(times).callback:
        started = time.perf_counter()
        outcome = run_audit(config, progress=False)
        total = time.perf_counter() - started
    return _result("local threads", outcome, total, times, memory, args)


def run_cluster(folder: Path, manifest: Path, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    import distributed

    from spray.pipeline import run_audit

    times = StageTimes()
    with MemorySampler() as memory, distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        config = audit_config(folder, manifest, weights, args.classes, "cluster", args.embedding,
                              cluster.scheduler_address, args.workers)
        with distributed.get_task_stream(client=client) as stream:
            started = time.perf_counter()
            outcome = run_audit(config, progress=False)
            total = time.perf_counter() - started
        for record in stream.data:
            compute = [s for s in record.get("startstops", []) if s["action"] == "compute"]
            if compute:
                times.add(record["key"], compute[0]["start"], compute[-1]["stop"])
    return _result(f"LocalCluster ({args.workers} processes)", outcome, total, times, memory, args)


def _result(name: str, outcome: Any, total: float, times: StageTimes, memory: MemorySampler,
            args: argparse.Namespace) -> dict[str, Any]:
    n_images = sum(result.n_samples for result in outcome.classes)
    flagged = [(r.class_index, c.id, c.size) for r, c in outcome.flagged]
    return {"run": name, "images": n_images, "classes": len(outcome.classes), "seconds": total,
            "images_per_s": n_images / total, "tasks_s": times.span(), "outside_tasks_s": total - times.span(),
            "stages": times.rows(n_images), "memory": memory.rows(),
            "flagged": flagged, "report": str(outcome.report)}


def print_result(result: dict[str, Any]) -> None:
    print(f"\n== {result['run']}: {result['images']} images, {result['classes']} classes, "
          f"{result['seconds']:.1f} s end to end ({result['images_per_s']:.0f} images/s, report included)")
    print(f"tasks ran for {result['tasks_s']:.1f} s; {result['outside_tasks_s']:.1f} s outside them (reading the "
          "manifest and hashing the images for the keys, building the graph, assembling and writing the report)")
    print("per stage: wall = first task start to last task end (stages overlap: classes move independently);")
    print("task s = summed task time; images/task-s = one worker thread's throughput in that stage")
    print(f"{'stage':<12}{'tasks':>7}{'wall s':>9}{'images/s':>11}{'task s':>9}{'images/task-s':>15}")
    for stage, row in result["stages"].items():
        print(f"{stage:<12}{row['tasks']:>7}{row['wall_s']:>9.1f}{row['images_per_s']:>11.0f}{row['task_s']:>9.1f}"
              f"{row['images_per_task_s']:>15.0f}")
    print(f"{'process':<12}{'pid':>7}{'peak RSS MB':>14}")
    for row in result["memory"]:
        print(f"{row['process']:<12}{row['pid']:>7}{row['peak_rss_mb']:>14.0f}")
    print("flagged (class, cluster, size):", result["flagged"] or "none")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=50_000, help="images in all (default 50,000)")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="threads (local) and worker processes (cluster)")
    parser.add_argument("--writers", type=int, default=os.cpu_count() or 1, help="processes writing the PNGs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--embedding", nargs="*", default=[], choices=["tsne", "umap"],
                        help="embeddings to compute (default none: they dominate and are benchmarked "
                        "in spectral_scale.py)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="spray-audit-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        manifest = make_dataset(folder / "images", args.n_images, args.classes, args.writers, args.seed)
        written = time.perf_counter() - started
        print(f"data: {args.n_images} PNGs of {SIZE}x{SIZE} in {args.classes} classes written in {written:.1f} s "
              f"({args.n_images / written:.0f} images/s, {args.writers} processes) to {folder}")
        started = time.perf_counter()
        weights = train_model(folder, manifest, args.classes, args.epochs, args.seed)
        print(f"model: trained in {time.perf_counter() - started:.1f} s")
        results = []
        if not args.skip_local:
            results.append(run_local(folder, manifest, weights, args))
            print_result(results[-1])
        if not args.skip_cluster:
            results.append(run_cluster(folder, manifest, weights, args))
            print_result(results[-1])
        if args.json:
            args.json.write_text(json.dumps({"n_images": args.n_images, "classes": args.classes,
                                             "write_s": written, "runs": results}, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
