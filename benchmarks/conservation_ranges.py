"""LRP conservation (sum of input relevance / explained logit) of every named composite on the demo models.

The report tells a reviewer which conservation values are ordinary for the run's composite; this measures
them: the demo digits CNN (with biases), with and without BatchNorm (folded by the canonizer), ``--per-class``
images of each class, every composite of ``spray.lrp.composites.COMPOSITES``. Printed per composite and
model: the 5th percentile, median and 95th percentile of the per-image ratio.

    python benchmarks/conservation_ranges.py [--per-class 30] [--folder demo-cases]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from spray.config import DataConfig, ImageConfig
from spray.data import Sample, load_dataset, load_pixels, to_model_input
from spray.demo import DemoConfig, build_case, build_model
from spray.lrp import conservation
from spray.lrp.composites import COMPOSITES
from spray.lrp.methods import attributor


def _images(folder: Path, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = load_dataset(DataConfig(manifest=folder / "images" / "manifest.csv"))
    chosen: list[Sample] = []
    for samples in dataset.by_class().values():
        chosen += samples[:per_class]
    image = ImageConfig(mode="L", size=(32, 32))
    pixels, ok, _ = load_pixels(chosen, image)
    return to_model_input(pixels, image), torch.tensor([chosen[i].label for i in ok])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--folder", type=Path, default=None, help="where the demo cases are built (default: temp)")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as temporary:
        root = arguments.folder or Path(temporary)
        print(f"{'model':<16}{'composite':<28}{'p5':>8}{'median':>8}{'p95':>8}")
        for batchnorm in (False, True):
            folder = root / f"demo-batchnorm-{batchnorm}"
            build_case(DemoConfig(directory=folder, batchnorm=batchnorm))
            model = build_model(batchnorm=batchnorm)
            model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
            x, targets = _images(folder, arguments.per_class)
            for name in COMPOSITES:
                engine = attributor("lrp", model.eval(), composite=name, low=[0.0], high=[1.0])
                logits, relevance = engine(x, targets)
                ratios = conservation(relevance, logits, targets).numpy()
                p5, median, p95 = np.percentile(ratios[np.isfinite(ratios)], [5, 50, 95])
                label = "CNN + BatchNorm" if batchnorm else "CNN"
                print(f"{label:<16}{name:<28}{p5:>8.3f}{median:>8.3f}{p95:>8.3f}")


if __name__ == "__main__":
    main()
