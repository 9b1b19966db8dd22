"""The demo trained with a checkpoint saved after every epoch, audited as a series: when does the watermark
shortcut appear, and does it strengthen?

The demo case (spray.demo: digits with a watermark planted on a quarter of the 3s) is built, then its CNN is
trained again from the same seeded initialisation on the case's training split (the images as the audit reads
them), saving ``checkpoints/step-<optimizer steps>.pt`` before training, after a few early steps and after each
epoch. The series is audited with ``model.weights: checkpoints/step-*.pt`` (ordered by name, numbers compared
as numbers; spray.pipeline.run_audit), and beside spray's timeline
the script measures how strongly each checkpoint uses the watermark, independently of spray: the share of
held-out images of other classes that turn into the target class when the watermark is pasted into them
(the demo's ``artifact_flip_rate``).

    python benchmarks/checkpoint_timeline.py [--folder DIR] [--classes 3 5] [--epochs 8] [--early-steps 0 10 20 30 40]

Prints one table per audited class: per checkpoint the class's accuracy, cluster count, highest cluster
score, each flagged pattern's score (* flagged) and cluster size, and the flip rate. The report with its timeline is in
``DIR/report/index.html``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from spray.config import load_config
from spray.demo import DemoConfig, artifact_mask, build_case, build_model, fit, plant, predict
from spray.pipeline import run_audit
from spray.timeline import Timeline


def load_images(case: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The case's manifest and its images ``(n, 32, 32)`` in [0, 1], as the audit decodes them."""
    manifest = pd.read_csv(case / "images" / "manifest.csv")
    images = np.stack([np.asarray(Image.open(case / "images" / path), np.float32) / 255 for path in manifest.path])
    return manifest, images


def train_with_checkpoints(demo: DemoConfig, manifest: pd.DataFrame, images: np.ndarray, folder: Path,
                           early: list[int]) -> list[Path]:
    """Train the demo CNN on the training split (``spray.demo.fit``, unchanged), saving its weights as
    ``step-<optimizer steps>.pt`` before training, after each step in ``early`` and after each epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(batchnorm=demo.batchnorm)
    torch.manual_seed(demo.seed)
    for module in model.modules():  # the demo's seeded initialisation (spray.demo._build)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    paths: list[Path] = []
    steps = [0]

    def save() -> None:
        path = folder / f"step-{steps[0]}.pt"
        if path not in paths:
            torch.save(model.state_dict(), path)
            paths.append(path)

    def before_forward(module: torch.nn.Module, inputs: object) -> None:
        # a training forward pass starts the next optimizer step: the weights now are those after steps[0]
        if module.training:
            if steps[0] in early:
                save()
            steps[0] += 1

    def after_epoch(epoch: int, loss: float) -> None:
        save()
        print(f"epoch {epoch}: loss {loss:.3f}, {steps[0]} steps", flush=True)

    train = (manifest.split == "train").to_numpy()
    hook = model.register_forward_pre_hook(before_forward)
    fit(model, torch.from_numpy(images[train, None]), torch.from_numpy(manifest.label.to_numpy()[train]).long(),
        demo.epochs, demo.seed, max_lr=3e-3, on_epoch=after_epoch)
    hook.remove()
    return paths


def flip_rates(demo: DemoConfig, manifest: pd.DataFrame, images: np.ndarray, paths: list[Path]) -> list[float]:
    """Per checkpoint: the share of held-out images of other classes predicted as the target class once the
    watermark is pasted into them (the same pasted images for every checkpoint)."""
    others = ((manifest.split == "test") & (manifest.label != demo.target_class)
              & (manifest.artifact == 0)).to_numpy()
    pasted = plant(images[others].copy(), artifact_mask(demo.artifact, demo.position), np.random.default_rng(1))
    rates = []
    for path in paths:
        model = build_model(batchnorm=demo.batchnorm)
        model.load_state_dict(torch.load(path, weights_only=True))
        rates.append(float((predict(model, pasted).argmax(1) == demo.target_class).mean()))
    return rates


def write_config(folder: Path, case: Path, classes: list[int]) -> Path:
    """The series' audit config: the demo's settings (pipelines/demo.yaml) with a glob of checkpoints."""
    config = {
        "model": {"factory": "spray.demo:build_model", "kwargs": {"batchnorm": False},
                  "weights": str(folder / "checkpoints" / "step-*.pt")},
        "data": {"manifest": str(case / "images" / "manifest.csv"),
                 "image": {"mode": "L", "size": [32, 32], "mean": [0.0], "std": [1.0]}},
        "audit": {"classes": classes},
        "attribution": {"composite": "epsilon_plus_flat", "batch_size": 128},
        "embedding": {"methods": ["tsne"]},
        "cache": {"directory": str(folder / "cache")},
        "output": str(folder / "report"),
    }
    path = folder / "series.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "spray-checkpoint-timeline",
                        help="where the case, checkpoints, cache and report go")
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 5], help="classes to audit")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (one checkpoint after each)")
    parser.add_argument("--early-steps", type=int, nargs="*", default=[0, 10, 20, 30, 40],
                        help="optimizer steps after which a checkpoint is saved too (0: the initialisation)")
    arguments = parser.parse_args()
    folder = arguments.folder.resolve()
    demo = DemoConfig(directory=folder / "demo-case", epochs=arguments.epochs)
    started = time.perf_counter()
    build_case(demo)
    manifest, images = load_images(demo.directory)
    paths = train_with_checkpoints(demo, manifest, images, folder / "checkpoints", arguments.early_steps)
    rates = flip_rates(demo, manifest, images, paths)
    print(f"case and {len(paths)} checkpoints in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    outcome = run_audit(load_config(write_config(folder, demo.directory, arguments.classes)), progress=False)
    print(f"series audited in {time.perf_counter() - started:.0f} s; stages {outcome.stages}\n")
    assert outcome.timeline is not None
    print_tables(outcome.timeline, rates)
    print(f"\nreport: {outcome.report}")


def print_tables(timeline: Timeline, rates: list[float]) -> None:
    """Markdown tables per class: per checkpoint the class's numbers, and for each flagged pattern its score
    (* flagged), size and lines of evidence (measured / threshold), beside the watermark flip rate."""
    names = [Path(path).stem for path in timeline.checkpoints]
    for item in timeline.classes:
        print(f"class {item.class_name}:\n")
        print("| checkpoint | accuracy | clusters | max score | flip rate |\n|---|---|---|---|---|")
        for position, step in enumerate(item.steps):
            print(f"| {names[position]} | {step.accuracy:.2f} | {step.n_clusters} | {step.max_score:.2f} | "
                  f"{rates[position]:.2f} |")
        for pattern in item.patterns:
            print(f"\nclass {item.class_name}, pattern {pattern.id + 1} (first flagged at "
                  f"{names[pattern.first_flagged]}):\n")
            print("| checkpoint | score | size | consistency | necessity | sufficiency | transplants turned | "
                  "flip rate |\n|---|---|---|---|---|---|---|---|")
            for position, point in enumerate(pattern.points):
                lines = point.lines
                print(f"| {names[position]} | {point.score:.2f}{' *' if point.flagged else ''} | {point.size} | "
                      f"{lines.consistency:.2f} | {lines.necessity:.2f} | {lines.sufficiency:.2f} | "
                      f"{lines.transplant_flip_rate:.2f} | {rates[position]:.2f} |")
        print()


if __name__ == "__main__":
    main()
