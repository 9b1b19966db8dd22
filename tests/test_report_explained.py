"""A reviewer understands the report without the README: named and explained evidence, the score's formula,
what conservation means, clean classes collapsed, every member of a flagged cluster on the page, the label
mapping, and no absolute machine paths."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from audit_cases import make_tiny_case, tiny_config, write_config

from spray.cli import main
from spray.config import load_config
from spray.errors import EXIT_OK
from spray.flag import CONSISTENCY, DECISION, NECESSITY, SUFFICIENCY, Measured, Transplant, weigh
from spray.pipeline import PathShower
from spray.report import write_report
from spray.report.explain import EVIDENCE
from spray.report.synthetic import synthetic_class, synthetic_run
from spray.results import Thumbnail


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> Path:
    case = make_tiny_case(tmp_path_factory.mktemp("explained") / "case")
    config = tiny_config(case)
    assert main(["run", str(write_config(case, config)), "--quiet"]) == EXIT_OK
    return case / "report"


def _evidence_keys(evidence: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in evidence.items():
        if key == "thresholds":
            continue
        keys |= _evidence_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


@pytest.mark.e2e
def test_every_evidence_line_the_audit_writes_has_a_name_and_a_meaning(tiny_report):
    summary = json.loads((tiny_report / "summary.json").read_text())
    written = set().union(*(_evidence_keys(cluster["evidence"])
                            for result in summary["classes"] for cluster in result["clusters"]))
    assert {"consistency", "necessity", "sufficiency", "decision"} <= written
    assert written <= set(EVIDENCE), f"add {sorted(written - set(EVIDENCE))} to spray/report/explain.py"
    page = html.unescape((tiny_report / "index.html").read_text())
    for key in ("consistency", "necessity", "masking_drop_rest", "transplant_gain_control"):
        assert EVIDENCE[key].name in page and EVIDENCE[key].meaning.split(":")[0] in page
    assert "× median logit" in page  # units next to the values
    assert (f"Score = the weakest of consistency / {CONSISTENCY:g}, necessity / {NECESSITY:g}, sufficiency / "
            f"{SUFFICIENCY:g} and decision / {DECISION:g}") in page
    assert re.search(r"score <b>[0-9.]+</b>\s*<span class=\"muted\">= (consistency|necessity|sufficiency|decision) ",
                     page)
    assert "What conservation means" in page
    assert "For this run's composite (epsilon_plus_flat), 90 % of the images" in page


@pytest.mark.e2e
def test_the_report_shows_no_absolute_path_of_the_machine(tiny_report):
    folder = str(tiny_report.parent)
    for name in ("index.html", "summary.json"):
        assert folder not in (tiny_report / name).read_text(), name
    run = json.loads((tiny_report / "summary.json").read_text())["run"]
    assert run["config_path"] == "audit.yaml" and run["data"].startswith("images/manifest.csv")
    assert run["config"]["model"]["factory"] == "models.py:build" and run["config"]["output"] == "report"


def test_absolute_paths_only_when_asked(tiny_case):
    relative = load_config(write_config(tiny_case, tiny_config(tiny_case)))
    absolute = load_config(write_config(tiny_case, tiny_config(tiny_case, report={"absolute_paths": True})))
    weights = tiny_case.resolve() / "model.pt"
    assert PathShower(relative)(weights) == "model.pt" and PathShower(absolute)(weights) == str(weights)
    assert PathShower(relative)(tiny_case.resolve().parent / "elsewhere" / "x.csv") == "../elsewhere/x.csv"
    assert PathShower(relative).config()["cache"]["directory"] == "cache"
    assert PathShower(absolute).config()["cache"]["directory"] == str(tiny_case.resolve() / "cache")


@pytest.mark.e2e
def test_the_label_mapping_is_in_the_report(tiny_report):
    page = (tiny_report / "index.html").read_text()
    assert "Labels → model outputs (integer labels are output indices)" in page
    assert json.loads((tiny_report / "summary.json").read_text())["label_mapping"]["outputs"][2] == {
        "output": 2, "name": "2"}


def _with_gallery(members: int):
    result = synthetic_class(0, "zero", n_clusters=2, per_cluster=members)
    flagged = next(cluster for cluster in result.clusters if cluster.flagged)
    flagged.members_shown = [Thumbnail(sample_id, np.full((32, 32, 3), 128, np.uint8), np.ones((32, 32), np.float32))
                             for sample_id in flagged.members]
    return result, flagged


def test_every_member_of_a_flagged_cluster_is_on_the_page_as_lazy_tiles(tmp_path):
    result, flagged = _with_gallery(members=40)
    page = write_report(tmp_path, [result], synthetic_run()).read_text()
    gallery = page[page.index('<details class="members-block">'):]
    gallery = gallery[: gallery.index("</details>")]
    assert f"All {flagged.size} members" in gallery
    assert gallery.count('<img loading="lazy"') == 2 * flagged.size  # image and relevance of each member
    for sample_id in flagged.members:
        assert f'title="{sample_id}"' in gallery


def test_clean_classes_are_collapsed_and_flagged_ones_open(tmp_path):
    flagged, _ = _with_gallery(members=12)
    clean = synthetic_class(1, "one", n_clusters=2, per_cluster=12, flagged_cluster=None, seed=1)
    page = write_report(tmp_path, [clean, flagged], synthetic_run()).read_text()
    sections = re.findall(r'<section class="card class-section" id="(class-\d)">\s*<details class="class-details"( open)?>',
                          page)
    assert sections == [("class-0", " open"), ("class-1", "")]  # flagged first, and open; the clean one closed
    assert "<script" not in page


def test_every_line_the_evidence_can_hold_has_a_name_and_a_meaning():
    measured = Measured(region_area=0.1, relevance_in_region=0.5, relevance_in_region_rest=0.1, consistency=0.9,
                        consistency_colour=0.9, consistency_shape=0.7, masking_drop=0.4, masking_drop_rest=0.1,
                        transplant=Transplant(0.3, 0.1, 0.2, 0.01, 4.2))
    everything = dataclasses.replace(weigh(measured, 1.0).joined(carriers=2, spectral_size=30), not_scored="why")
    keys = set(everything.to_dict()) - {"thresholds"}
    assert len(keys) == 19 and keys <= set(EVIDENCE), f"add {sorted(keys - set(EVIDENCE))} to spray/report/explain.py"
