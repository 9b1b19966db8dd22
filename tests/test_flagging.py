"""Flagging finds planted Clever Hans artifacts and leaves clean models alone.

The acceptance cases are digits models trained in the test (spray.demo) with artifacts, positions, classes
and fractions that differ from the built-in demo's (a watermark at the bottom right of 25 % of the 3s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spray.config import config_from_dict
from spray.flag import distinctive_region
from spray.pipeline import run_audit


def test_the_distinctive_region_is_where_members_differ_from_the_rest():
    maps = np.zeros((10, 8, 8), np.float32)
    maps[:, 3:5, 3:5] = 1.0  # every sample looks at the centre
    maps[:4, 0, 7] = 3.0  # four samples also at the top-right corner
    region = distinctive_region(maps, np.arange(10) < 4, max_fraction=0.25)
    assert region[0, 7] and region.sum() == 1


def test_the_distinctive_region_is_capped_in_area():
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(20, 8, 8)).astype(np.float32)
    members = np.arange(20) < 10
    maps[members] += 1.0  # members differ everywhere
    assert distinctive_region(maps, members, max_fraction=0.1).sum() == 6


def audit(folder: Path, classes: list[int] | None, **demo) -> tuple[dict[str, bool], set[str], list]:
    """Build and audit a planted case; return (planted per id, flagged ids of the target class, other flags)."""
    raw = {
        "demo": {"directory": str(folder / "case"), **demo},
        "model": {"factory": "spray.demo:build_model", "kwargs": {"batchnorm": demo.get("batchnorm", False)},
                  "weights": str(folder / "case" / "model.pt")},
        "data": {"manifest": str(folder / "case" / "images" / "manifest.csv"), "image": {"mode": "L", "size": [32, 32]}},
        "audit": {"classes": classes},
        "attribution": {"batch_size": 256, "shard_size": 1024},
        "embedding": {"methods": []},
        "cache": {"directory": str(folder / "cache")},
        "output": str(folder / "report"),
    }
    outcome = run_audit(config_from_dict(raw, base_dir=folder), progress=False)
    manifest = pd.read_csv(folder / "case" / "images" / "manifest.csv")
    planted = set(manifest.loc[manifest.artifact == 1, "path"])
    target = demo.get("target_class")
    flagged = {m for r in outcome.classes if r.class_index == target for c in r.clusters if c.flagged for m in c.members}
    elsewhere = [(r.class_index, c.id) for r in outcome.classes if r.class_index != target for c in r.clusters if c.flagged]
    return planted, flagged, elsewhere


PLANTED = [
    dict(artifact="tag", position="top-left", target_class=7, fraction=0.15, batchnorm=False, seed=11),
    dict(artifact="frame", position="top-left", target_class=0, fraction=0.35, batchnorm=True, seed=12),
    dict(artifact="stripe", position="bottom-left", target_class=5, fraction=0.2, batchnorm=False, seed=13),
    dict(artifact="watermark", position="top-right", target_class=8, fraction=0.3, batchnorm=True, seed=14),
]


@pytest.mark.slow
@pytest.mark.parametrize("demo", PLANTED, ids=lambda d: f"{d['artifact']}-{d['position']}-class{d['target_class']}")
def test_flags_match_the_planted_samples(tmp_path, demo):
    planted, flagged, elsewhere = audit(tmp_path, [demo["target_class"], (demo["target_class"] + 1) % 10], **demo)
    true_positive = len(planted & flagged)
    assert flagged, "nothing flagged"
    assert true_positive / len(flagged) >= 0.9, "precision"
    assert true_positive / len(planted) >= 0.9, "recall"
    assert elsewhere == []


@pytest.mark.slow
def test_a_model_trained_without_an_artifact_gets_no_flag(tmp_path):
    planted, flagged, elsewhere = audit(tmp_path, None, artifact="none", fraction=0.0, batchnorm=True, seed=21)
    assert planted == set() and flagged == set() and elsewhere == []
