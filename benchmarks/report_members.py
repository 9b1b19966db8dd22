"""Page size and render time in headless Chromium of a report whose flagged cluster shows every member.

One synthetic class with a flagged cluster of ``--members`` samples (photo-sized images shrunk to the gallery's
48-pixel tiles). Three variants are measured in the same run: no gallery (the baseline), the gallery as
written (a closed ``<details>``, lazy images), and the gallery opened (``open`` added, what a reviewer gets
after clicking). Render time: wall time of a headless Chromium screenshot of the first 1280 x 900 window
(start, parse, layout, paint), the best of ``--repeats``.

    python benchmarks/report_members.py [--members 1000] [--side 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from screenshot import chromium_command, find_chromium

from spray.report import write_report
from spray.report.images import resize_float, shrink
from spray.report.synthetic import synthetic_class, synthetic_run
from spray.results import Thumbnail


def _report(folder: Path, members: int, side: int, gallery: bool, opened: bool) -> Path:
    result = synthetic_class(0, "zero", n_clusters=2, per_cluster=members, image_size=side, colour=True)
    flagged = next(cluster for cluster in result.clusters if cluster.flagged)
    rng = np.random.default_rng(0)
    if gallery:
        thumbnails = []
        for number, sample_id in enumerate(flagged.members):
            image = flagged.prototype_images[number % len(flagged.prototype_images)]
            small = shrink(np.clip(image.astype(np.int16) + rng.integers(-8, 8, image.shape), 0, 255).astype(np.uint8), 48)
            heatmap = resize_float(flagged.prototype_heatmaps[number % len(flagged.prototype_heatmaps)], *small.shape[:2])
            thumbnails.append(Thumbnail(sample_id, small, heatmap.astype(np.float32)))
        flagged.members_shown = thumbnails
    page = write_report(folder, [result], synthetic_run())
    if opened:
        page.write_text(page.read_text(encoding="utf-8").replace('<details class="members-block">',
                                                                 '<details class="members-block" open>'))
    return page


def _render_seconds(chromium: str, page: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as profile:
            shot = Path(profile) / "shot.png"
            command = chromium_command(chromium, Path(profile) / "p", 1280, 900, f"--screenshot={shot}", page.as_uri())
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True, timeout=300)
            times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--side", type=int, default=224, help="side of the synthetic images, pixels")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    variants = [("no gallery (baseline)", False, False), ("gallery, closed (default)", True, False),
                ("gallery, opened", True, True)]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        for name, gallery, opened in variants:
            page = _report(Path(temporary) / name.split()[0] / str(opened), arguments.members, arguments.side,
                           gallery, opened)
            rows.append((name, page.stat().st_size / 2**20, _render_seconds(chromium, page, arguments.repeats)))
    print(f"flagged cluster of {arguments.members} members, {arguments.side}x{arguments.side} images, 48-pixel tiles")
    print(f"{'variant':<28}{'index.html (MB)':>16}{'render (s)':>12}{'size ratio':>12}{'time ratio':>12}")
    for name, size, seconds in rows:
        print(f"{name:<28}{size:>16.2f}{seconds:>12.2f}{size / rows[0][1]:>12.2f}{seconds / rows[0][2]:>12.2f}")


if __name__ == "__main__":
    main()
