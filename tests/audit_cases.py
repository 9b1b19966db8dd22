"""A tiny three-class image case with an untrained CNN, and config helpers, for the pipeline tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_MODEL = '''
import torch
from torch import nn


def build(n_classes: int = 3, channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 8 * 8, n_classes),
    )
'''


def make_tiny_case(folder: Path, per_class: int = 24, seed: int = 0, rgb: bool = False) -> Path:
    """Three classes of 16x16 PNGs (a bar at a class-specific place, plus noise; greyscale, or RGB with the
    bar in the class's colour channel), a manifest, a factory file and seeded untrained weights."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for label in range(3):
        for number in range(per_class):
            image = rng.uniform(0, 0.3, size=(16, 16, 3 if rgb else 1))
            image[2 + 5 * label : 5 + 5 * label, 2 + int(rng.integers(0, 8)) :][:, :6, label % image.shape[2]] = 1.0
            name = f"c{label}/{number:03d}.png"
            (folder / "images" / name).parent.mkdir(exist_ok=True)
            pixels = (image * 255).astype(np.uint8)
            Image.fromarray(pixels if rgb else pixels[..., 0]).save(folder / "images" / name)
            rows.append(f"{name},{label}")
    (folder / "images" / "manifest.csv").write_text("\n".join(rows) + "\n")
    (folder / "models.py").write_text(TINY_MODEL)
    namespace: dict[str, Any] = {}
    exec(TINY_MODEL, namespace)
    torch.manual_seed(seed)
    torch.save(namespace["build"](channels=3 if rgb else 1).state_dict(), folder / "model.pt")
    return folder


def tiny_config(folder: Path, **sections: Any) -> dict[str, Any]:
    """A config dict for the tiny case; keyword arguments replace or add whole sections."""
    config: dict[str, Any] = {
        "model": {"factory": "models.py:build", "weights": "model.pt"},
        "data": {"manifest": "images/manifest.csv", "image": {"mode": "L", "size": [16, 16]}},
        "attribution": {"shard_size": 16, "batch_size": 8},
        "preprocessing": {"size": [8, 8]},
        "analysis": {"neighbors": 5, "eigenvalues": 8, "max_clusters": 4},
        "embedding": {"methods": ["tsne"]},
        "flagging": {"transplant_images": 20},
        "cache": {"directory": "cache"},
        "output": "report",
    }
    config.update(sections)
    return config


def write_config(folder: Path, config: dict[str, Any], name: str = "audit.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def audit_demo_case(folder: Path, demo: dict[str, Any], classes: list[int], **sections: Any) -> tuple[Any, Any]:
    """Build a demo-style planted case (``spray.demo``, ``demo`` its settings) in ``folder / "case"`` and audit
    ``classes`` of it, with ``sections`` over the defaults; returns the run's outcome and the case's manifest."""
    import pandas as pd

    from spray.demo import case_config, load_demo, prepare_demo
    from spray.pipeline import run_audit

    raw = case_config(folder, demo, classes, **sections)
    demo_config, config = load_demo(raw, base_dir=folder)
    prepare_demo(demo_config)  # the case is built before the audit, as `python -m spray run` does
    return run_audit(config, progress=False), pd.read_csv(folder / "case" / "images" / "manifest.csv")
