"""Peak memory of decoding very large photos with the loader threads, with and without the large-image lock.

``spray.data`` decodes images above ``LARGE_IMAGE_PIXELS`` one at a time; the baseline (measured in the same
run, each variant in a fresh process so that its peak is its own) lets every loader thread decode at once.

    python benchmarks/decode_memory.py [--side 12000] [--images 8] [--workers 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

_CHILD = """
import sys, time
sys.path.insert(0, {bench!r})
from pathlib import Path
import spray.data as data
from spray.config import ImageConfig
from _memory import peak_rss_mb, rss_mb
if {unguarded}:
    data.LARGE_IMAGE_PIXELS = 10**12
paths = sorted(Path({folder!r}).glob("*.jpg"))
samples = [data.Sample(p.name, p, 0) for p in paths]
image = ImageConfig(mode="RGB", size=(224, 224), shorter_side=256)
before = rss_mb()
start = time.perf_counter()
for batch in data.iter_pixel_batches(samples, image, batch_size=len(samples), workers={workers}):
    assert not batch.failed, batch.failed
print(peak_rss_mb() - before, time.perf_counter() - start)
"""


def _make_images(folder: Path, side: int, count: int) -> None:
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, size=(side // 8, side // 8, 3), dtype=np.uint8)
    picture = Image.fromarray(np.tile(tile, (8, 8, 1)))
    for number in range(count):
        picture.save(folder / f"photo{number}.jpg", quality=85)


def _measure(folder: Path, workers: int, unguarded: bool) -> tuple[float, float]:
    code = _CHILD.format(bench=str(Path(__file__).parent), folder=str(folder), workers=workers, unguarded=unguarded)
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    peak, seconds = map(float, output.split())
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000, help="width and height of each photo, pixels")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="attribution.loader_workers")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        started = time.perf_counter()
        _make_images(folder, arguments.side, arguments.images)
        print(f"{arguments.images} JPEG photos of {arguments.side}x{arguments.side} made in "
              f"{time.perf_counter() - started:.0f} s; decoded to 224x224 (shorter side 256), "
              f"{arguments.workers} loader threads")
        baseline = _measure(folder, arguments.workers, unguarded=True)
        guarded = _measure(folder, arguments.workers, unguarded=False)
    print(f"{'variant':<34}{'peak memory above start (MB)':>30}{'time (s)':>10}{'memory ratio':>14}")
    print(f"{'all threads decode at once':<34}{baseline[0]:>30.0f}{baseline[1]:>10.1f}{1.0:>14.2f}")
    print(f"{'large images one at a time':<34}{guarded[0]:>30.0f}{guarded[1]:>10.1f}"
          f"{guarded[0] / baseline[0]:>14.2f}")


if __name__ == "__main__":
    main()
