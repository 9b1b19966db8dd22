"""NEON on a planted shortcut: the flagged cluster's membership map lands on the artifact.

benchmarks/neon_localisation.py measures this on the demo and on planted cases of several kinds (docs/method.md);
this is its smallest case: the demo's watermark, one image per bundled digit, trained briefly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from audit_cases import audit_demo_case
from scipy.ndimage import binary_dilation

from spray.config import FlaggingConfig
from spray.demo import artifact_mask


@pytest.mark.e2e
def test_the_flagged_clusters_membership_map_lands_on_the_planted_watermark(tmp_path: Path) -> None:
    demo = {"artifact": "watermark", "position": "bottom-right", "target_class": 3, "fraction": 0.25, "seed": 0,
            "variants": 1, "epochs": 4}
    outcome, manifest = audit_demo_case(tmp_path, demo, [3], evaluation={"enabled": False})
    planted = set(manifest.loc[manifest.artifact == 1, "path"])
    (result,) = outcome.classes
    (flagged,) = [c for c in result.clusters if c.flagged]
    assert len(set(flagged.members) & planted) >= 0.9 * len(flagged.members)
    # explained against a cluster big enough to be scored, not against a few samples left over
    sizes = {c.id: c.size for c in result.clusters}
    assert flagged.neon is not None and sizes[flagged.neon.competitor] >= FlaggingConfig().min_cluster_size
    positive = np.clip(flagged.neon.mean_map, 0, None)
    near = binary_dilation(artifact_mask("watermark", "bottom-right"), iterations=2)  # and 2 pixels around it
    assert positive[near].sum() / positive.sum() > 0.5 > near.mean() * 5
    summary = json.loads((Path(outcome.report).parent / "summary.json").read_text())
    (stored,) = [c for c in summary["classes"][0]["clusters"] if c["id"] == flagged.id]
    assert stored["neon"]["competitor"] == flagged.neon.competitor
