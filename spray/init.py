"""``python -m spray init MODEL IMAGES``: write a commented starter config for a model and an image folder.

``MODEL`` is the factory (``models.py``, ``models.py:build`` or ``package.module:build``); ``--weights`` adds
a state_dict. ``IMAGES`` is a folder with a ``manifest.csv`` (columns path,label) or one sub-folder per
class. What can be read without running the user's code is filled in: the factory's candidate callables
(parsed, not imported), the layout, the image mode and size of the first image, the class folders. Every
other key keeps its documented default and is listed, commented, so the file shows what can be changed.
Nothing is overwritten: an existing config is a ConfigError.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from spray.data import IMAGE_EXTENSIONS
from spray.errors import ConfigError, DataError, ModelError

_FACTORY_WORDS = ("build", "make", "create", "get", "model", "net")


@dataclass(frozen=True)
class ImageGuess:
    """What the first image says about the input: its PIL mode for spray (L or RGB) and [height, width]."""

    mode: str
    size: tuple[int, int]
    example: Path


def guess_factory(model: str) -> tuple[str, list[str]]:
    """``(factory spec, other callables)``: a file's top-level functions and classes, parsed with ast.

    ``models.py:build`` and ``package.module:build`` are taken as given. For ``models.py`` the callable whose
    name looks most like a model factory is chosen. Raises ModelError for a file that is absent or not Python.
    """
    _source, sep, name = model.rpartition(":")
    if sep and name.isidentifier():
        return model, []
    path = Path(model)
    if path.suffix != ".py":
        raise ModelError(f"model {model!r}: expected a factory file 'models.py', 'models.py:build' or "
                         "'package.module:build' (the weights go to --weights)")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except FileNotFoundError:
        raise ModelError(f"model factory file not found: {path}") from None
    except SyntaxError as error:
        raise ModelError(f"model factory file {path}, line {error.lineno}: SyntaxError: {error.msg}") from None
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
             and not node.name.startswith("_")]
    if not names:
        raise ModelError(f"model factory file {path} defines no public function or class returning a model")
    best = max(names, key=lambda n: sum(word in n.lower() for word in _FACTORY_WORDS))
    return f"{model}:{best}", [n for n in names if n != best]


def find_layout(folder: Path) -> tuple[str, Path, list[str]]:
    """``("manifest", csv, [])`` or ``("root", folder, class folders)``; DataError when neither is there."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    for name in ("manifest.csv", "labels.csv"):
        if (folder / name).is_file():
            return "manifest", folder / name, []
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has neither a manifest.csv (columns path,label) nor one sub-folder per class")
    return "root", folder, classes


def first_image(folder: Path) -> ImageGuess:
    """Mode and size of the first image found under ``folder`` (sorted walk); DataError when there is none."""
    pending = [folder]
    while pending:  # depth first in sorted order, stopping at the first image: a large tree is not listed
        directory = pending.pop()
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
        for path in entries:
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                try:
                    with Image.open(path) as opened:
                        mode = "L" if opened.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                        return ImageGuess(mode, (opened.height, opened.width), path)
                except OSError:
                    continue
        pending += [p for p in reversed(entries) if p.is_dir() and not p.name.startswith(".")]
    raise DataError(f"no readable image ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")


def starter_config(config_path: Path, model: str, images: Path, weights: Path | None) -> str:
    """The text of a commented starter config, paths relative to ``config_path``'s folder."""
    base = config_path.resolve().parent
    factory, others = guess_factory(model)
    source = factory.rpartition(":")[0]
    if source.endswith(".py"):
        factory = f"{_relative(Path(source), base)}:{factory.rpartition(':')[2]}"
    layout, data_path, classes = find_layout(images)
    guess = first_image(images)
    height, width = guess.size
    lines = [
        "# spray audit config, written by `spray init`. Check every line marked CHECK, then run:",
        f"#   python -m spray validate {config_path.name}   (seconds: model, weights, one image per class)",
        f"#   python -m spray run {config_path.name}",
        "# Every key and its default: docs/configuration.md. Paths are relative to this file.",
        "",
        "model:",
        f"  factory: {factory}" + (f"   # CHECK: other callables there: {', '.join(others)}" if others else ""),
        "  kwargs: {}   # keyword arguments for the factory",
        f"  weights: {_relative(weights, base)}" if weights else "  # weights: model.pt   # a state_dict saved with torch.save(model.state_dict(), path)",
        "",
        "data:",
        f"  {layout}: {_relative(data_path, base)}",
    ]
    if classes:
        lines.append(f"  # {len(classes)} class folders, numbered in sorted order onto the model's outputs. If the")
        lines.append("  # outputs are in another order, or a class has no folder, name every output in order:")
        lines.append(f"  # class_names: [{', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}]")
    else:
        lines.append("  # class_names: [...]   # needed for string labels unless they are exactly the outputs, sorted")
    lines += [
        "  image:",
        f"    mode: {guess.mode}   # CHECK: from {_relative(guess.example, base)}; what the model's first layer takes",
        f"    size: [{height}, {width}]   # CHECK: [height, width] the model was trained on",
        "    # For torchvision's Resize(256) + CenterCrop(224): shorter_side: 256 and size: [224, 224]",
        "    # interpolation: bilinear   # nearest, bilinear, bicubic, lanczos, box, hamming",
        "    mean: [0.0]   # CHECK: the normalisation the model was trained with, e.g. ImageNet:",
        "    std: [1.0]    #   mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]",
        "",
        "# audit:",
        "#   classes: [0, 1]   # default: every class with enough samples",
        "# attribution:",
        "#   composite: epsilon_plus_flat",
        "#   batch_size: 64",
        "",
        "cache:",
        "  directory: .spray-cache",
        "output: spray-report",
        "",
    ]
    return "\n".join(lines)


def write_starter_config(config_path: Path, model: str, images: Path, weights: Path | None = None) -> Path:
    """Write :func:`starter_config` to ``config_path`` (never over an existing file); return the path."""
    if config_path.exists():
        raise ConfigError(f"{config_path} exists; spray init writes a new file only (give --config NEW.yaml)")
    if weights is not None and not weights.is_file():
        raise ModelError(f"weights file not found: {weights}")
    text = starter_config(config_path, model, images, weights)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text, encoding="utf-8")
    return config_path


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base)).as_posix()
