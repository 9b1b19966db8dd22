"""The evaluate stage (spray.faithfulness) in the audit: faithfulness per class and cluster, NEON per cluster."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spray.config import load_config
from spray.faithfulness import sampled_rows
from spray.neon import positive_share_in_region
from spray.pipeline import AuditOutcome, run_audit
from spray.report.schema import validate_summary


def test_sampled_rows_are_capped_at_the_explained_samples_and_reproducible() -> None:
    assert sampled_rows(5, 32, seed=0).tolist() == [0, 1, 2, 3, 4]
    rows = sampled_rows(100, 10, seed=3)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and (np.diff(rows) > 0).all()
    assert rows.tolist() == sampled_rows(100, 10, seed=3).tolist()
    assert sampled_rows(0, 4, seed=0).tolist() == []


def test_positive_share_in_region_counts_only_positive_relevance() -> None:
    relevance = np.array([[2.0, -5.0], [1.0, 1.0]])
    region = np.array([[True, True], [False, False]])
    assert positive_share_in_region(relevance, region) == pytest.approx(0.5)
    assert positive_share_in_region(relevance, None) is None
    assert positive_share_in_region(relevance, np.zeros((2, 2), bool)) is None


def _audit(config_path: Path) -> tuple[AuditOutcome, dict[str, Any]]:
    outcome = run_audit(load_config(config_path), progress=False)
    summary = json.loads((outcome.report.parent / "summary.json").read_text())
    validate_summary(summary)
    return outcome, summary


@pytest.mark.e2e
def test_faithfulness_per_class_and_cluster_with_a_sample_count_above_the_class_size(tiny_audit) -> None:
    # 24 images per class: asking for 50 measures every explained one
    outcome, summary = _audit(tiny_audit(evaluation={"samples": 50, "patch_size": 4, "steps": 8}))
    assert outcome.stages["evaluate"] == {"computed": 3, "cached": 0}
    frame = pd.read_csv(outcome.report.parent / "samples.csv", dtype={"id": str})
    for entry, result in zip(summary["classes"], outcome.classes):
        class_faith = entry["faithfulness"]
        assert class_faith["n"] == result.n_samples == 24
        assert class_faith["aopc_gain"] == pytest.approx(class_faith["aopc_morf"] - class_faith["aopc_random"])
        assert result.faithfulness is not None and result.faithfulness.morf_curve.shape == (9,)
        measured = [c["faithfulness"]["n"] for c in entry["clusters"] if c["faithfulness"] is not None]
        assert sum(measured) == class_faith["n"]
        rows = frame[frame["class"] == entry["class"]]
        assert rows["aopc_gain"].notna().all()
        assert rows["aopc_gain"].mean() == pytest.approx(class_faith["aopc_gain"])
    # a second run finds every evaluate entry cached
    again = run_audit(load_config(tiny_audit(evaluation={"samples": 50, "patch_size": 4, "steps": 8})),
                      progress=False)
    assert again.stages["evaluate"] == {"computed": 0, "cached": 3}


@pytest.mark.e2e
def test_neon_per_cluster_is_consistent_and_evaluation_can_be_off(tiny_audit) -> None:
    outcome, summary = _audit(tiny_audit(evaluation={"enabled": False}))
    assert outcome.stages["evaluate"] == {"computed": 0, "cached": 0}
    frame = pd.read_csv(outcome.report.parent / "samples.csv", dtype={"id": str})
    assert frame["aopc_gain"].isna().all()
    html = (outcome.report.parent / "index.html").read_text()
    assert "Region perturbation" not in html
    for entry, result in zip(summary["classes"], outcome.classes):
        assert entry["faithfulness"] is None
        ids = {c.id for c in result.clusters}
        assert all(stored["faithfulness"] is None for stored in entry["clusters"])
        stored_by_id = {stored["id"]: stored for stored in entry["clusters"]}
        for cluster in result.clusters:
            stored = stored_by_id[cluster.id]
            if len(ids) < 2:
                assert cluster.neon is None and stored["neon"] is None
                continue
            neon = cluster.neon
            assert neon is not None and neon.competitor in ids - {cluster.id}
            assert stored["neon"]["competitor"] == neon.competitor
            # conservation: the mean membership map sums to the members' mean logit
            assert float(neon.mean_map.sum()) == pytest.approx(neon.mean_logit, rel=1e-4, abs=1e-6)
            expected = positive_share_in_region(neon.mean_map, cluster.region)
            share = stored["neon"]["positive_share_in_region"]
            assert (share is None) == (expected is None)
            if expected is not None and not math.isnan(expected):
                assert share == pytest.approx(expected)
            assert len(cluster.prototype_neon_maps) == len(cluster.prototypes)
            assert cluster.prototype_neon_maps[0].shape == cluster.mean_map.shape
        if len(ids) >= 2:
            assert "Apart from cluster" in html
