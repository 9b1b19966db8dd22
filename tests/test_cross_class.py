"""audit.cross_class: one spectral analysis of the heatmaps of every audited class together."""

from __future__ import annotations

import json

import pytest

from spray.config import load_config
from spray.pipeline import run_audit

pytestmark = pytest.mark.e2e  # every test here runs the whole pipeline


def test_the_cross_class_analysis_covers_every_audited_sample_and_has_its_report_section(tiny_audit):
    config = load_config(tiny_audit(audit={"cross_class": True}))
    outcome = run_audit(config, progress=False)
    assert outcome.stages["cross_class"] == {"computed": 1, "cached": 0}
    cross = outcome.cross_class
    assert sorted(cross.ids) == sorted(i for r in outcome.classes for i in r.ids) and cross.n_samples == 72
    assert cross.embeddings["tsne"].shape == (72, 2) and set(cross.class_names) == {0, 1, 2}

    summary = json.loads((outcome.report.parent / "summary.json").read_text())["cross_class"]
    assert summary["n_samples"] == 72 and summary["classes"] == [0, 1, 2]
    assert summary["n_clusters"] == len(summary["clusters"]) >= 2
    counts = [c["count"] for cluster in summary["clusters"] for c in cluster["classes"]]
    assert sum(counts) == 72 and all(sum(c["count"] for c in k["classes"]) == k["size"] for k in summary["clusters"])

    page = outcome.report.read_text(encoding="utf-8")
    section = page[page.index('id="cross-class"'):]
    assert "Embeddings of the cross-class analysis" in section and 'href="#class-0"' in section

    # it is cached like every stage, and a per-class audit without it does not run it
    assert run_audit(config, progress=False).stages["cross_class"] == {"computed": 0, "cached": 1}
    plain = run_audit(load_config(tiny_audit()), progress=False)
    assert "cross_class" not in plain.stages and plain.cross_class is None
    assert 'id="cross-class"' not in plain.report.read_text(encoding="utf-8")
