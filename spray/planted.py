"""Generated Clever Hans cases for benchmarks and tests: photo crops or digits, planted artifacts, small nets.

A case is a small labelled image set in which some artifacts are planted on a share of one class each, a
model trained on it, and the ground truth in the manifest (column ``artifact``: 0 for none, else the
1-based number of the artifact) and in ``artifact_masks.npz`` (each image's artifact pixels). What varies, so
that flagging is measured on more than one kind of shortcut:

- source: ``photos`` (64x64 RGB random crops of the photos that ship with scikit-learn and, when installed,
  scikit-image; a class is one photo, or two photos with ``subgroups``: two natural visual sub-groups) or
  ``digits`` (32x32 greyscale renderings of scikit-learn's digits, as in ``spray.demo``);
- model: ``cnn`` (three conv blocks, global average pooling) or ``resnet`` (a stem and two residual blocks
  with BatchNorm);
- artifact (on photos, the tagged images are crops of any class's photos, so that only the tag tells
  their class, as with a watermark on the images of one collection): ``logo`` (a ring with a dot on a dark plate) placed at a ``fixed`` corner, a random ``corner``
  or a ``random`` position, its side scaled by ``scale`` (0.5: anywhere from 50 % to 150 %), in one colour
  or a random colour per image (``colour="random"``); or ``border`` (a thin coloured frame, 3 px at 64x64).

``build_case`` also measures that the model uses each artifact: pasting it into held-out images of other
classes must turn a share of them into its class (``training.json``: ``flip_rate`` per artifact).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from spray.demo import fit

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
ARTIFACT_MASKS = "artifact_masks.npz"  # beside a built case's images/: each image's artifact pixels
_RING = np.array(
    [
        [0, 0, 1, 1, 1, 0, 0],
        [0, 1, 0, 0, 0, 1, 0],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [0, 1, 0, 0, 0, 1, 0],
        [0, 0, 1, 1, 1, 0, 0],
    ],
    dtype=bool,
)


@dataclass(frozen=True)
class Artifact:
    """One planted shortcut: what, on which class, on what share of it, where and how it varies."""

    kind: Literal["logo", "border"]
    target_class: int
    fraction: float = 0.25
    placement: Literal["fixed", "corner", "random"] = "fixed"  # logos only
    corner: str = "bottom-right"  # where a ``fixed`` logo goes
    scale: float = 0.0  # the logo's side varies by up to this share either way (0.5: 50 % to 150 %)
    colour: str = "fixed"  # "fixed": one colour for the case, "random": a random colour per image


@dataclass(frozen=True)
class Case:
    """A generated case; ``artifacts`` empty: a clean model."""

    source: Literal["photos", "digits"] = "photos"
    model: Literal["cnn", "resnet"] = "cnn"
    artifacts: tuple[Artifact, ...] = ()
    subgroups: bool = False  # photos: each class made of two different photos
    # which photos: every one installed packages bundle, or scikit-learn's only (the same on every machine)
    photos: Literal["installed", "scikit-learn"] = "installed"
    n_classes: int = 4
    per_class: int = 160
    epochs: int = 16
    seed: int = 0

    @property
    def size(self) -> int:
        return 64 if self.source == "photos" else 32

    @property
    def channels(self) -> int:
        return 3 if self.source == "photos" else 1


# ------------------------------------------------------------------------------------------------------
# models


def build_model(kind: str = "cnn", channels: int = 3, n_classes: int = 4) -> nn.Module:
    """``cnn``: three conv-ReLU-maxpool blocks, global average pooling, a linear layer; ``resnet``: a conv
    stem with BatchNorm and two residual blocks (stride 2, BatchNorm, projection shortcuts), then the same
    head. Both take (N, channels, H, W) of any H, W >= 8."""
    if kind == "cnn":
        layers: list[nn.Module] = []
        for c_in, c_out in ((channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))
    if kind == "resnet":
        return nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            _Residual(16, 32), _Residual(32, 64), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))
    raise ValueError(f"model kind {kind!r}: expected 'cnn' or 'resnet'")


class _Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus a strided 1x1 projection of the input, then ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.project = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.bn3(self.project(x)))


# ------------------------------------------------------------------------------------------------------
# images


def bundled_photos(scikit_learn_only: bool = False) -> list[np.ndarray]:
    """RGB photos (H, W, 3) float32 in [0, 1] that ship with installed packages: scikit-learn's two, and
    scikit-image's colour photos when scikit-image is installed (the ``photos`` extra) unless
    ``scikit_learn_only``."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(image, np.float32) / 255 for image in load_sample_images().images]
    if scikit_learn_only:
        return photos
    try:
        import skimage.data as data
    except ImportError:
        return photos
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        image = getattr(data, name)()
        photos.append(np.asarray(image[..., :3], np.float32) / 255)
    return photos


def photo_sources(count: int, scikit_learn_only: bool = False) -> list[np.ndarray]:
    """At least ``count`` distinct photos: the bundled ones (``bundled_photos``), and when there are fewer,
    the photos cut into vertical strips, each strip a photo of its own (no crop spans two)."""
    photos = bundled_photos(scikit_learn_only)
    pieces = 1
    while len(photos) * pieces < count:
        pieces += 1
    if pieces == 1:
        return photos
    if min(photo.shape[1] for photo in photos) // pieces < 96:
        raise ValueError(f"{count} distinct photos asked for; {len(photos)} are installed "
                         "(pip install 'spray[photos]' for more)")
    return [strip for photo in photos for strip in np.array_split(photo, pieces, axis=1)]


def photo_crops(photo: np.ndarray, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random square crops of 20-40 % of the photo's short side, resized to (size, size), randomly
    flipped, with per-channel gain jitter and pixel noise: (count, size, size, 3) float32 in [0, 1].

    Small crops and colour jitter make a photo's class hard enough to read that a planted artifact is an
    attractive shortcut (a model of clean crops of whole photos needs nothing else)."""
    from PIL import Image

    height, width = photo.shape[:2]
    source = Image.fromarray((photo * 255).astype(np.uint8))
    crops = np.empty((count, size, size, 3), np.float32)
    for index in range(count):
        side = int(rng.uniform(0.2, 0.4) * min(height, width))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = np.asarray(source.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR),
                          np.float32) / 255
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = crop * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 0.04, crop.shape)
        crops[index] = np.clip(crop, 0, 1)
    return crops


def _source_images(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (n, S, S, C), labels (n,), group (n,): the photo or bundled digit each image comes from)."""
    if case.source == "digits":
        from sklearn.datasets import load_digits

        from spray.demo import render_digits

        digits = load_digits()
        keep = np.concatenate([rng.permutation(np.flatnonzero(digits.target == label))[: case.per_class]
                               for label in range(case.n_classes)])
        images, source = render_digits(digits.images[keep], 1, rng)
        return images[..., None], digits.target[keep][source], keep[source]
    per_class = 2 if case.subgroups else 1
    photos = photo_sources(case.n_classes * per_class, case.photos == "scikit-learn")
    chosen = rng.permutation(len(photos))[: case.n_classes * per_class]
    crops: list[np.ndarray] = []
    crop_labels: list[np.ndarray] = []
    crop_groups: list[np.ndarray] = []
    for label in range(case.n_classes):
        for part, photo in enumerate(chosen[label * per_class : (label + 1) * per_class]):
            count = case.per_class // per_class + (part < case.per_class % per_class)
            crops.append(photo_crops(photos[photo], count, case.size, rng))
            crop_labels.append(np.full(count, label))
            crop_groups.append(np.full(count, photo))
    return np.concatenate(crops), np.concatenate(crop_labels), np.concatenate(crop_groups)


def _colour(case_colour: np.ndarray, artifact: Artifact, channels: int, rng: np.random.Generator) -> np.ndarray:
    if channels == 1:
        return np.array([rng.uniform(0.85, 1.0)], np.float32)
    if artifact.colour == "random":
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        colour[rng.integers(3)] = 1.0
        return colour
    return np.clip(case_colour * rng.uniform(0.9, 1.0), 0, 1).astype(np.float32)


def draw(image: np.ndarray, artifact: Artifact, case_colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw ``artifact`` into ``image`` (S, S, C) in place; returns the (S, S) bool mask of what was drawn."""
    size, channels = image.shape[0], image.shape[2]
    colour = _colour(case_colour, artifact, channels, rng)
    mask = np.zeros((size, size), bool)
    if artifact.kind == "border":
        width = max(1, round(3 * size / 64))
        mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
        image[mask] = colour
        return mask
    from PIL import Image

    side = round(len(_RING) * size / 32 * (1 + rng.uniform(-artifact.scale, artifact.scale)))
    side = max(5, side)
    glyph = np.asarray(Image.fromarray(_RING.astype(np.uint8) * 255).resize((side, side), Image.Resampling.NEAREST)) > 127
    margin = max(1, size // 32)
    if artifact.placement == "random":
        top, left = (int(rng.integers(margin, size - margin - side + 1)) for _ in range(2))
    else:
        corner = artifact.corner if artifact.placement == "fixed" else CORNERS[int(rng.integers(4))]
        top = margin if corner.startswith("top") else size - margin - side
        left = margin if corner.endswith("left") else size - margin - side
    window = image[top : top + side, left : left + side]
    window[:] = 0.05  # the dark plate
    window[glyph] = colour
    mask[top : top + side, left : left + side] = True
    return mask


# ------------------------------------------------------------------------------------------------------
# training and the case on disk


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int) -> list[float]:
    """``spray.demo.fit`` (Adam, one-cycle schedule peaking at 4e-3, batch 64) on images (n, S, S, C)."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return fit(model, x, torch.from_numpy(labels).long(), epochs, seed, max_lr=4e-3)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Predicted classes (n,) of images (n, S, S, C) in [0, 1]."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1).numpy()


@dataclass(frozen=True)
class Planted:
    """A case's images with its artifacts drawn in, before training: ``images (n, S, S, C)`` float32 in
    [0, 1], ``labels (n,)``, ``groups (n,)`` (the photo or bundled digit each image comes from), ``planted
    (n,)`` (0, or the 1-based number of the artifact drawn into the image), ``masks (n, S, S)`` bool (the
    pixels each image's artifact covers: a logo's whole plate, a border's frame; all False where none) and
    ``colours``: each artifact's case colour (RGB)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    planted: np.ndarray
    masks: np.ndarray
    colours: list[np.ndarray]


def plant_case(case: Case, rng: np.random.Generator) -> Planted:
    """The images of ``case`` with its artifacts drawn in, from ``rng`` (``build_case`` seeds it with
    ``case.seed`` and draws the split after this, so the same seed gives the same images and masks)."""
    images, labels, groups = _source_images(case, rng)
    planted = np.zeros(len(images), int)
    masks = np.zeros(images.shape[:3], bool)
    colours = [rng.uniform(0, 1, 3).astype(np.float32) for _ in case.artifacts]
    for colour in colours:
        colour[rng.integers(3)] = 1.0  # a saturated colour, visible on most photos
    for number, artifact in enumerate(case.artifacts, start=1):
        rows = np.flatnonzero((labels == artifact.target_class) & (planted == 0))
        chosen = rng.choice(rows, size=round(artifact.fraction * (labels == artifact.target_class).sum()),
                            replace=False)
        if case.source == "photos":
            # Tagged images come from another source: crops of any class's photos. The model can only fit
            # them by the tag, as with a watermark on the images of one collection.
            donors = rng.choice(len(images), size=len(chosen))
            images[chosen], groups[chosen] = images[donors], groups[donors]
        for row in chosen:
            masks[row] = draw(images[row], artifact, colours[number - 1], rng)
        planted[chosen] = number
    return Planted(images, labels, groups, planted, masks, colours)


def read_artifact_masks(directory: Path, size: int) -> np.ndarray:
    """The ``(n, size, size)`` bool artifact masks ``build_case`` wrote into ``directory``, in manifest order."""
    with np.load(Path(directory) / ARTIFACT_MASKS) as stored:
        return np.unpackbits(stored["masks"], axis=-1, count=size).astype(bool)


def is_built(directory: Path, case: Case) -> bool:
    """Whether ``directory`` (``build_case``'s) already holds this very case; a field added to ``Case`` since
    the case was built counts with its default."""
    record = directory / "training.json"
    if not record.exists():
        return False
    stored = {**json.loads(json.dumps(asdict(Case()))), **json.loads(record.read_text())["case"]}
    return stored == json.loads(json.dumps(asdict(case)))


def build_case(directory: Path, case: Case) -> dict:
    """Write ``images/`` (PNGs and manifest.csv with columns path, label, split, artifact, group),
    ``artifact_masks.npz`` (each image's artifact pixels, see ``Planted.masks``; ``read_artifact_masks``),
    ``model.pt`` and ``training.json`` into ``directory``; returns the training record.

    The record holds the held-out accuracy and, per artifact, ``flip_rate``: the share of held-out images
    of other classes that the model assigns to the artifact's class once the artifact is drawn into them.
    """
    from PIL import Image

    rng = np.random.default_rng(case.seed)
    generated = plant_case(case, rng)
    images, labels, groups, planted, colours = (generated.images, generated.labels, generated.groups,
                                                generated.planted, generated.colours)
    in_train = rng.random(len(images)) < 0.75
    torch.manual_seed(case.seed)  # before the model is built: its initial weights come from the case's seed
    model = build_model(case.model, case.channels, case.n_classes)
    losses = train(model, images[in_train], labels[in_train], case.epochs, case.seed)
    record = {"case": asdict(case), "losses": losses,
              "test_accuracy": float((predict(model, images[~in_train]) == labels[~in_train]).mean()),
              "flip_rate": [_flip_rate(model, images, labels, ~in_train & (planted == 0), a, c, rng)
                            for a, c in zip(case.artifacts, colours)]}
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "images").mkdir(parents=True)
    manifest = ["path,label,split,artifact,group"]
    for index, image in enumerate(images):
        name = f"{labels[index]}/{index:05d}.png"
        (directory / "images" / name).parent.mkdir(exist_ok=True)
        pixels = (image * 255).round().astype(np.uint8)
        Image.fromarray(pixels if case.channels == 3 else pixels[..., 0]).save(directory / "images" / name)
        manifest.append(f"{name},{labels[index]},{'train' if in_train[index] else 'test'},{planted[index]},"
                        f"{groups[index]}")
    (directory / "images" / "manifest.csv").write_text("\n".join(manifest) + "\n")
    np.savez_compressed(directory / ARTIFACT_MASKS, masks=np.packbits(generated.masks, axis=-1))
    torch.save(model.state_dict(), directory / "model.pt")
    (directory / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _flip_rate(model: nn.Module, images: np.ndarray, labels: np.ndarray, held_out: np.ndarray,
               artifact: Artifact, colour: np.ndarray, rng: np.random.Generator) -> float:
    others = held_out & (labels != artifact.target_class)
    pasted = images[others].copy()
    for image in pasted:
        draw(image, artifact, colour, rng)
    return float((predict(model, pasted) == artifact.target_class).mean())
