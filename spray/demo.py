"""The built-in demo case: bundled handwritten digits with a planted artifact, and a small CNN trained on them.

scikit-learn ships 1,797 digits of 8x8 pixels. Each is rendered several times into a 32x32 image with a
random size, rotation, position, contrast, background noise and faint clutter strokes, so that reading the
digit is hard enough for a small CNN that a planted artifact (a watermark, a frame, a tag or a stripe on a
fraction of one class's images) is an attractive shortcut. The CNN is trained on 70 % of the bundled digits
(all variants of a digit stay in the same split); every image goes into the manifest, which carries the
ground truth in its ``artifact`` column so that an audit can be scored.

``build_case`` also measures whether the model really uses the artifact (``training.json``): pasting the
artifact into held-out images of other classes must turn a good share of them into the target class.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from spray.config import SprayConfig, config_from_dict, validated

log = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    """The ``demo:`` section of a config: the case ``python -m spray run`` builds before the audit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Field(default=Path("demo-case"), description="where the demo images and model are built")
    target_class: int = Field(default=3, ge=0, le=9, description="digit whose images get the artifact")
    artifact: Literal["watermark", "frame", "tag", "stripe", "none"] = Field(
        default="watermark", description="what is planted ('none' trains a clean model)"
    )
    position: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = Field(
        default="bottom-right", description="corner the artifact is planted in (frame: ignored)"
    )
    fraction: float = Field(default=0.25, ge=0, le=1, description="share of the target class's images that get it")
    batchnorm: bool = Field(default=False, description="train the CNN with BatchNorm layers")
    variants: int = Field(default=3, ge=1, description="augmented images made from each bundled digit")
    epochs: int = Field(default=8, ge=1, description="training epochs")
    seed: int = Field(default=0, description="seed of the images and of training")


def case_config(folder: Path, demo: dict[str, Any], classes: list[int] | None, **sections: Any) -> dict[str, Any]:
    """The config mapping that builds a demo-style case (``demo``: ``DemoConfig``'s settings) in
    ``folder / "case"`` and audits ``classes`` of it (None: every class), cache and report in ``folder``; each
    of ``sections`` replaces that section. For ``load_demo``; tests and benchmarks plant their cases with it."""
    case = folder / "case"
    return {
        "demo": {"directory": str(case), **demo},
        "model": {"factory": "spray.demo:build_model", "kwargs": {"batchnorm": bool(demo.get("batchnorm", False))},
                  "weights": str(case / "model.pt")},
        "data": {"manifest": str(case / "images" / "manifest.csv"), "image": {"mode": "L", "size": [32, 32]}},
        "audit": {"classes": classes},
        "attribution": {"batch_size": 256},
        "embedding": {"methods": []},
        "cache": {"directory": str(folder / "cache")},
        "output": str(folder / "report"),
        **sections,
    }


def load_demo(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> tuple[DemoConfig | None, SprayConfig]:
    """Split a config mapping into its ``demo`` section (None without one) and the audit config.

    Relative paths (``demo.directory`` too) resolve against ``base_dir``; raises ConfigError by key path.
    """
    where = str(source) if source is not None else "config"
    rest = {key: value for key, value in raw.items() if key != "demo"}
    demo = None
    if "demo" in raw:
        demo = validated(DemoConfig, raw["demo"] if raw["demo"] is not None else {}, where, ("demo",))
        directory = Path(demo.directory).expanduser()
        demo = demo.model_copy(update={"directory": (base_dir.resolve() / directory).resolve()})
    return demo, config_from_dict(rest, base_dir, source)


def prepare_demo(config: DemoConfig) -> dict[str, Any]:
    """Build the demo case (once; later runs reuse it) and log how strongly its model uses the artifact.
    Returns the training record (``training.json``)."""
    log.info("demo case in %s (built once, then reused)", config.directory)
    record = build_case(config)
    if "artifact_flip_rate" in record:
        log.info(
            "demo model: held-out accuracy %.0f %%; pasting the %s into held-out images of other classes "
            "turns %.0f %% of them into class %d (%.0f %% without it): the model uses the shortcut",
            100 * record["test_accuracy"], config.artifact, 100 * record["artifact_flip_rate"],
            config.target_class, 100 * record["flip_rate_without_artifact"])
    return record

SIZE = 32
_MARGIN = 1  # pixels between the artifact and the image border

_WATERMARK = np.array(
    [
        [0, 1, 1, 1, 0],
        [1, 0, 0, 0, 1],
        [1, 0, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [0, 1, 1, 1, 0],
    ],
    dtype=bool,
)
_TAG = np.array(
    [
        [1, 1, 1, 1, 1, 1, 0],
        [1, 0, 1, 0, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0],
    ],
    dtype=bool,
)


def build_model(batchnorm: bool = False, n_classes: int = 10, channels: int = 1) -> nn.Sequential:
    """The demo's CNN for 32x32 inputs: three conv blocks, then two dense layers.

    Flatten (not global pooling) before the dense layers keeps *where* a feature is, which is what lets
    such a model learn a positional shortcut like a corner watermark.
    """

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        return layers

    return nn.Sequential(
        *block(channels, 16),
        *block(16, 32),
        *block(32, 64),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(128, n_classes),
    )


def artifact_mask(kind: str, position: str, size: int = SIZE) -> np.ndarray:
    """Where the artifact is drawn: (size, size) bool. ``frame`` ignores the position."""
    mask = np.zeros((size, size), dtype=bool)
    if kind == "none":
        return mask
    if kind == "frame":
        mask[[0, -1], :] = True
        mask[:, [0, -1]] = True
        return mask
    if kind == "stripe":
        row = _MARGIN if position.startswith("top") else size - 1 - _MARGIN
        half = size // 2
        cols = slice(0, half) if position.endswith("left") else slice(size - half, size)
        mask[row, cols] = True
        return mask
    glyph = {"watermark": _WATERMARK, "tag": _TAG}[kind]
    height, width = glyph.shape
    top = _MARGIN if position.startswith("top") else size - _MARGIN - height
    left = _MARGIN if position.endswith("left") else size - _MARGIN - width
    mask[top : top + height, left : left + width] = glyph
    return mask


def render_digits(
    digits: np.ndarray, variants: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render each 8x8 digit ``variants`` times into varied 32x32 images.

    digits: (n, 8, 8) in [0, 16]. Returns (images (n * variants, 32, 32) float32 in [0, 1], source index).
    """
    from PIL import Image

    images = np.empty((len(digits) * variants, SIZE, SIZE), dtype=np.float32)
    source = np.repeat(np.arange(len(digits)), variants)
    for out, index in enumerate(source):
        glyph = Image.fromarray((digits[index] / 16.0 * 255).astype(np.uint8))
        side = int(rng.integers(14, 23))
        glyph = glyph.resize((side, side), Image.Resampling.BILINEAR).rotate(
            float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR, expand=False
        )
        canvas = _background(rng)
        # The digit stays clear of the 6x6 corners where artifacts go, so an artifact is never hidden.
        top, left = (int(rng.integers(4, SIZE - 4 - side + 1)) for _ in range(2))
        ink = np.asarray(glyph, dtype=np.float32) / 255.0 * float(rng.uniform(0.45, 1.0))
        window = canvas[top : top + side, left : left + side]
        np.maximum(window, ink, out=window)
        images[out] = np.clip(canvas, 0.0, 1.0)
    return images, source


def _background(rng: np.random.Generator) -> np.ndarray:
    canvas = rng.normal(0.12, float(rng.uniform(0.03, 0.12)), size=(SIZE, SIZE)).astype(np.float32)
    # Faint strokes anywhere, corners included: they make the digit harder to read and keep the corners
    # from being empty, so an artifact has to be learned as a shape, not as "anything in the corner".
    for _ in range(int(rng.integers(0, 4))):
        length = int(rng.integers(4, 12))
        row, col = rng.integers(0, SIZE, size=2)
        angle = rng.uniform(0, np.pi)
        steps = np.arange(length)
        rows = np.clip((row + steps * np.sin(angle)).astype(int), 0, SIZE - 1)
        cols = np.clip((col + steps * np.cos(angle)).astype(int), 0, SIZE - 1)
        canvas[rows, cols] = np.maximum(canvas[rows, cols], float(rng.uniform(0.2, 0.5)))
    return canvas


def plant(images: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw the artifact into images (n, H, W) in place with a bright, slightly varying intensity."""
    for image in images:
        image[mask] = float(rng.uniform(0.8, 1.0))
    return images


def train(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int
) -> list[float]:
    """Adam on cross-entropy, batch 64; returns the mean loss of each epoch. images: (n, 32, 32) in [0, 1]."""
    def log_epoch(epoch: int, loss: float) -> None:
        log.info("demo: training epoch %d/%d, loss %.3f", epoch, epochs, loss)

    return fit(model, torch.from_numpy(images[:, None]), torch.from_numpy(labels).long(), epochs, seed,
               max_lr=3e-3, on_epoch=log_epoch)


def fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, max_lr: float,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``x (n, C, H, W)``, ``y (n,)`` long: Adam with a one-cycle learning-rate schedule
    (peak ``max_lr``) on cross-entropy, batch 64, seeded. Returns the mean loss of each epoch and calls
    ``on_epoch(epoch, loss)`` after each (epochs counted from 1). Leaves the model in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * ((len(x) + 63) // 64)
    )
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(x))
        if on_epoch is not None:
            on_epoch(len(losses), losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Logits (n, 10) for images (n, 32, 32) in [0, 1]."""
    model.eval()
    outputs = [model(torch.from_numpy(images[i : i + 512, None])) for i in range(0, len(images), 512)]
    return torch.cat(outputs).numpy()


def build_case(config: DemoConfig) -> dict[str, Any]:
    """Write images, manifest.csv, model.pt and training.json into ``config.directory``.

    Returns the training record. The case is rebuilt only when the parameters differ from the stamp of
    the previous build (``case.json``), so a second run of the demo reuses it. Runs that start together
    build it once (a lock beside the folder); a case appears whole or not at all (built in a staging folder
    of this process, then renamed).
    """
    directory = Path(config.directory)
    parameters = config.model_dump(mode="json", exclude={"directory"})
    if _built(directory, parameters):
        return json.loads((directory / "training.json").read_text())
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Runs that start together take turns: the first builds, the others find its finished case.
    with open(directory.with_name(f".{directory.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _built(directory, parameters):
            return json.loads((directory / "training.json").read_text())
        return _build(directory, parameters, config)


def _built(directory: Path, parameters: dict[str, Any]) -> bool:
    """Whether ``directory`` holds a finished case built with ``parameters`` (its stamp is written last)."""
    stamp = directory / "case.json"
    try:
        return json.loads(stamp.read_text()).get("parameters") == parameters
    except (FileNotFoundError, ValueError):
        return False


def _build(directory: Path, parameters: dict[str, Any], config: DemoConfig) -> dict[str, Any]:
    from PIL import Image
    from sklearn.datasets import load_digits

    started = time.perf_counter()
    log.info("demo: building the case (images, then a small CNN trained for %d epochs)", config.epochs)
    rng = np.random.default_rng(config.seed)
    bundled = load_digits()
    images, source = render_digits(bundled.images, config.variants, rng)
    labels = bundled.target[source]
    in_train = np.zeros(len(bundled.images), dtype=bool)
    in_train[rng.permutation(len(bundled.images))[: int(0.7 * len(bundled.images))]] = True
    train_rows = in_train[source]

    mask = artifact_mask(config.artifact, config.position)
    planted = np.zeros(len(images), dtype=bool)
    if config.artifact != "none" and config.fraction > 0:
        target_rows = np.flatnonzero(labels == config.target_class)
        chosen = rng.choice(target_rows, size=round(config.fraction * len(target_rows)), replace=False)
        planted[chosen] = True
        copies = images[chosen]  # fancy indexing copies: plant into the copy, then store it back
        plant(copies, mask, rng)
        images[chosen] = copies

    model = build_model(batchnorm=config.batchnorm)
    torch.manual_seed(config.seed)
    for module in model.modules():  # re-seed the initialisation independently of module order
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    losses = train(model, images[train_rows], labels[train_rows], config.epochs, config.seed)

    record = _measure(model, images, labels, train_rows, planted, mask, config, rng)
    record.update({"losses": losses, "seconds": time.perf_counter() - started})

    log.info("demo: writing %d images and the model to %s", len(images), directory)
    # a staging folder of this process alone; one left by a killed build is removed by the next build
    for stale in directory.parent.glob(f"{directory.name}.building*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = directory.with_name(f"{directory.name}.building-{os.getpid()}")
    (staging / "images").mkdir(parents=True)
    rows = ["path,label,split,artifact"]
    for index, (image, label) in enumerate(zip(images, labels)):
        name = f"images/{label}/{index:05d}.png"
        (staging / name).parent.mkdir(exist_ok=True)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(staging / name)
        rows.append(f"{name[len('images/'):]},{label},{'train' if train_rows[index] else 'test'},{int(planted[index])}")
    (staging / "images" / "manifest.csv").write_text("\n".join(rows) + "\n")
    torch.save(model.state_dict(), staging / "model.pt")
    (staging / "training.json").write_text(json.dumps(record, indent=2))
    (staging / "case.json").write_text(json.dumps({"parameters": parameters}, indent=2))
    # Swap the finished case in at once so that an interrupted build never looks complete.
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return record


def _measure(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    planted: np.ndarray,
    mask: np.ndarray,
    config: DemoConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Held-out accuracy and how strongly the model uses the artifact."""
    held_out = ~train_rows
    predictions = predict(model, images[held_out]).argmax(1)
    record: dict[str, Any] = {
        "test_accuracy": float((predictions == labels[held_out]).mean()),
        "n_images": len(images),
        "n_planted": int(planted.sum()),
    }
    if planted.any():
        others = held_out & (labels != config.target_class)
        pasted = plant(images[others].copy(), mask, rng)
        flipped = predict(model, pasted).argmax(1) == config.target_class
        before = predict(model, images[others]).argmax(1) == config.target_class
        record["artifact_flip_rate"] = float(flipped.mean())
        record["flip_rate_without_artifact"] = float(before.mean())
        target = held_out & (labels == config.target_class)
        cleaned = images[target & planted].copy()
        cleaned[:, mask] = images[target & ~planted][:, mask].mean(0)
        record["target_accuracy_planted"] = float(
            (predict(model, images[target & planted]).argmax(1) == config.target_class).mean()
        )
        record["target_accuracy_planted_artifact_removed"] = float(
            (predict(model, cleaned).argmax(1) == config.target_class).mean()
        )
    return record
