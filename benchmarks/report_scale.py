"""How long the report of a many-class audit takes to write: class pages drawn serially vs by worker processes.

    python benchmarks/report_scale.py [--classes 50 200] [--large] [--workers N] [--repeats 1] [--json PATH]
        [--clusters 6] [--per-cluster 40] [--prototypes 6] [--size 32] [--colour] [--profile-classes 10]

Data: ``spray.report.synthetic.synthetic_class`` results (one flagged class in seven), ``--clusters``
clusters of ``--per-cluster`` samples each, t-SNE and UMAP embeddings, ``--prototypes`` prototypes per
cluster of ``--size`` pixels (gray, or colour with ``--colour``). With more than 20 classes every class has a
page of its own; those pages are what the workers draw. ``--large`` adds a 1,000-class report.

For each number of classes, ``write_report`` runs twice, each in a fresh process that loads the same pickled
classes (so that start-up, peak memory and CPU time are its own): ``workers=1`` (the baseline: every page
drawn in the main process) and ``workers=--workers`` (default: one per CPU). Both runs' outputs are compared
byte for byte. Reported per run: wall seconds of ``write_report``, CPU seconds (main process plus workers;
divided by the wall seconds of the parallel run, the cores it actually got), peak resident memory of the
main process during ``write_report`` (VmHWM, reset once the classes are loaded; it includes the classes it
was given, ``input_mb``) and of the largest worker, and the report's size on disk. With ``--repeats`` the
two runs alternate which goes first and the table shows the fastest of each.

Then ``--profile-classes`` pages are drawn in this process with the drawing functions timed, to show where a
page's time goes (figures: building and layout, drawing, PNG encoding; image tiles; the rest: template and
writing). ``--json PATH`` writes ``{"runs": [...], "page_profile": {...}}``.

The machine this was written on has 2 CPU cores shared with other jobs: the load average (before and after
each row) and the cores the parallel run got are printed; compare the two runs of one row (back to back),
not rows of different invocations.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _memory import peak_rss_mb, rss_mb  # benchmarks/_memory.py (scripts run from benchmarks/)

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))


def build_classes(n: int, args: argparse.Namespace) -> list:
    from spray.report.synthetic import synthetic_class

    return [
        synthetic_class(i, f"class {i}", n_clusters=args.clusters, per_cluster=args.per_cluster,
                        n_prototypes=args.prototypes, image_size=args.size, colour=args.colour,
                        flagged_cluster=0 if i % 7 == 0 else None, seed=i)
        for i in range(n)
    ]


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current resident memory (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class WorkerMemory:
    """Samples the peak resident memory (VmHWM) of this process's worker processes every 50 ms.

    ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` would not do: a spawned worker starts as a fork of this process,
    and the kernel keeps the resident memory of that copy, shared with this process, as the child's peak.
    """

    def __init__(self) -> None:
        self.peak_mb: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import multiprocessing

        while not self._done.wait(0.05):
            for child in multiprocessing.active_children():
                try:
                    with open(f"/proc/{child.pid}/status") as status:
                        for line in status:
                            if line.startswith("VmHWM:"):
                                mb = int(line.split()[1]) / 1024
                                self.peak_mb[child.pid] = max(self.peak_mb.get(child.pid, 0.0), mb)
                except OSError:
                    pass

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()


def one_run(classes_file: str, output: str, workers: int) -> dict[str, Any]:
    """In a fresh process: load the classes, write the report, measure."""
    from spray.report import write_report
    from spray.report.synthetic import synthetic_run

    before = rss_mb()
    with open(classes_file, "rb") as handle:
        classes = pickle.load(handle)
    input_mb = rss_mb() - before
    run = synthetic_run()
    gc.collect()
    _reset_peak_rss()  # the peak of loading the pickle is not the report's
    cpu_self, cpu_children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    with WorkerMemory() as worker_memory:
        start = time.perf_counter()
        write_report(Path(output), classes, run, workers=workers)
        seconds = time.perf_counter() - start
    folder = Path(output)
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds(resource.RUSAGE_SELF) - cpu_self
        + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_children,
        "peak_memory_mb": peak_rss_mb(),
        "worker_peak_memory_mb": max(worker_memory.peak_mb.values(), default=None),
        "n_worker_processes": len(worker_memory.peak_mb),
        "input_mb": input_mb,
        "report_mb": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20,
    }


def run_in_process(classes_file: Path, output: Path, workers: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one-run", str(classes_file), str(output), str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
    if done.returncode != 0:
        raise SystemExit(f"the run with workers={workers} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_bytes(first: Path, second: Path) -> bool:
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    other = sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    return files == other and all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


# ------------------------------------------------------------------------------------------ page profile


def profile_pages(classes: list) -> dict[str, float]:
    """Milliseconds per class page, by part, for pages drawn in this process (after one warm-up page)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from spray.report import figures, images
    from spray.report._io import write_atomic
    from spray.report.html import ClassPageRenderer, PageContext, class_page
    from spray.report.synthetic import synthetic_run

    totals: dict[str, float] = {}
    scope = ["page"]

    def timed(name: str, function, new_scope: str | None = None):
        def wrapper(*args, **kwargs):
            key = f"{scope[-1]}.{name}" if new_scope is None else name
            if new_scope is not None:
                scope.append(new_scope)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - start
                if new_scope is not None:
                    scope.pop()
        return wrapper

    patches = [
        (figures, "spectrum_figure", "figures", "figures"), (figures, "conservation_figure", "figures", "figures"),
        (figures, "embedding_figure", "figures", "figures"), (images, "map_tile", "tiles", "tiles"),
        (images, "image_tile", "tiles", "tiles"), (images, "overlay_tile", "tiles", "tiles"),
        (Figure, "tight_layout", "layout", None), (FigureCanvasAgg, "draw", "draw", None),
        (Image.Image, "quantize", "quantize", None), (Image.Image, "save", "png", None),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in patches]
    for owner, name, key, new_scope in patches:
        setattr(owner, name, timed(key, getattr(owner, name), new_scope))
    output = Path(tempfile.mkdtemp(prefix="spray-report-profile-"))
    (output / "classes").mkdir()
    try:
        render = ClassPageRenderer(PageContext.of(classes, synthetic_run()))
        render(classes[0], 1)  # warm-up: fonts, template
        totals.clear()
        start = time.perf_counter()
        for rank, result in enumerate(classes, start=1):
            write_atomic(output / class_page(result.class_index), render(result, rank))
        page = time.perf_counter() - start
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    n = len(classes)
    figures_total, tiles_total = totals.get("figures", 0.0), totals.get("tiles", 0.0)
    parts = {
        "figures: build": figures_total - sum(totals.get(f"figures.{k}", 0.0) for k in ("layout", "draw", "quantize", "png")),
        "figures: tight_layout": totals.get("figures.layout", 0.0),
        "figures: draw (Agg)": totals.get("figures.draw", 0.0),
        "figures: quantize": totals.get("figures.quantize", 0.0),
        "figures: PNG encode": totals.get("figures.png", 0.0),
        "tiles: colouring": tiles_total - totals.get("tiles.quantize", 0.0) - totals.get("tiles.png", 0.0),
        "tiles: quantize": totals.get("tiles.quantize", 0.0),
        "tiles: PNG encode": totals.get("tiles.png", 0.0),
        "template, views, write": page - figures_total - tiles_total,
        "page": page,
    }
    return {name: 1000 * value / n for name, value in parts.items()}


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one-run":
        print(json.dumps(one_run(argv[1], argv[2], int(argv[3]))))
        return 0
    from spray.report._pages import default_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--large", action="store_true", help="add a 1,000-class report")
    parser.add_argument("--workers", type=int, default=default_workers(), help="default: one per CPU")
    parser.add_argument("--clusters", type=int, default=6)
    parser.add_argument("--per-cluster", type=int, default=40)
    parser.add_argument("--prototypes", type=int, default=6)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--colour", action="store_true")
    parser.add_argument("--profile-classes", type=int, default=10, help="pages drawn for the profile (0: none)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each (alternating which goes first); the fastest is shown, all are in --json")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.classes + ([1000] if args.large else [])))
    print(f"{args.clusters} clusters x {args.per_cluster} samples per class, {args.prototypes} prototypes of "
          f"{args.size} px ({'colour' if args.colour else 'gray'}); {args.workers} workers, "
          f"{default_workers()} CPUs; best of {args.repeats}", flush=True)
    runs: list[dict[str, Any]] = []
    header = (f"{'classes':>7} | {'serial s':>8} | {'parallel s':>10} | {'ratio':>5} | {'ms/page ser/par':>15} | "
              f"{'CPU s ser/par':>13} | {'cores used par':>14} | {'peak MB main ser/par':>20} | {'worker MB':>9} | "
              f"{'input MB':>8} | {'report MB':>9} | same | load")
    print(f"{header}\n{'-' * len(header)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="spray-report-scale-") as folder:
        folder = Path(folder)
        for n in sizes:
            classes_file = folder / f"classes-{n}.pkl"
            with open(classes_file, "wb") as handle:
                pickle.dump(build_classes(n, args), handle, protocol=pickle.HIGHEST_PROTOCOL)
            load = os.getloadavg()[0]
            tries: dict[int, list[dict[str, Any]]] = {1: [], args.workers: []}
            for repeat in range(args.repeats):
                # alternate which goes first, so that a burst of load elsewhere does not always hit the same one
                for workers in ((1, args.workers) if repeat % 2 == 0 else (args.workers, 1)):
                    output = folder / f"{'serial' if workers == 1 else 'parallel'}-{n}"
                    subprocess.run(["rm", "-rf", str(output)], check=True)
                    tries[workers].append(run_in_process(classes_file, output, workers))
            same = same_bytes(folder / f"serial-{n}", folder / f"parallel-{n}")
            for workers, results in tries.items():
                runs += [{"classes": n, "workers": workers, "repeat": i, **result, "same_bytes_as_serial": same}
                         for i, result in enumerate(results)]
            serial = min(tries[1], key=lambda r: r["seconds"])
            parallel = min(tries[args.workers], key=lambda r: r["seconds"])
            print(
                f"{n:>7} | {serial['seconds']:>8.1f} | {parallel['seconds']:>10.1f} | "
                f"{serial['seconds'] / parallel['seconds']:>4.2f}x | "
                f"{1000 * serial['seconds'] / n:>7.0f}/{1000 * parallel['seconds'] / n:<7.0f} | "
                f"{serial['cpu_seconds']:>6.0f}/{parallel['cpu_seconds']:<6.0f} | "
                f"{parallel['cpu_seconds'] / parallel['seconds']:>14.2f} | "
                f"{serial['peak_memory_mb']:>10.0f}/{parallel['peak_memory_mb']:<9.0f} | "
                f"{parallel['worker_peak_memory_mb'] or 0:>9.0f} | {serial['input_mb']:>8.0f} | "
                f"{serial['report_mb']:>9.1f} | {'yes ' if same else 'NO  '} | "
                f"{load:.1f}-{os.getloadavg()[0]:.1f}", flush=True)
            (folder / f"classes-{n}.pkl").unlink()
            for kind in ("serial", "parallel"):
                subprocess.run(["rm", "-rf", str(folder / f"{kind}-{n}")], check=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    profile: dict[str, float] = {}
    if args.profile_classes > 0:
        profile = profile_pages(build_classes(args.profile_classes, args))
        print(f"\nwhere a page's time goes (serial, {args.profile_classes} pages, ms per page):")
        for name, ms in profile.items():
            print(f"  {name:<24} {ms:7.1f}  {100 * ms / profile['page']:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                         "runs": runs, "page_profile": profile}, indent=2) + "\n")
    return 0 if all(run["same_bytes_as_serial"] for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
