"""summary.json's published JSON Schema (docs/summary.schema.json) and real outputs against it."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from spray.report import write_report
from spray.report.schema import SCHEMA_VERSION, json_schema, validate_summary
from spray.report.synthetic import synthetic_class, synthetic_run

PUBLISHED = Path(__file__).resolve().parents[1] / "docs" / "summary.schema.json"


def test_the_published_schema_is_the_one_spray_writes_by():
    assert json.loads(PUBLISHED.read_text()) == json_schema(), (
        "regenerate: python -m spray.report.schema > docs/summary.schema.json")


def test_a_written_summary_validates_and_carries_the_schema_version(tmp_path):
    classes = [synthetic_class(i, f"class {i}", n_clusters=3, per_cluster=6, n_prototypes=2, image_size=16,
                               flagged_cluster=0 if i == 0 else None, seed=i) for i in range(2)]
    write_report(tmp_path, classes, synthetic_run())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION
    validated = validate_summary(summary)
    assert [c.class_index for c in validated.classes] == [0, 1]


def test_a_summary_without_a_required_key_is_refused_naming_it(tmp_path):
    write_report(tmp_path, [synthetic_class(0, "a", n_clusters=2, per_cluster=5, n_prototypes=1, image_size=16)],
                 synthetic_run())
    summary = json.loads((tmp_path / "summary.json").read_text())
    del summary["classes"][0]["clusters"][0]["members"]
    with pytest.raises(ValidationError, match=r"classes\.0\.clusters\.0\.members"):
        validate_summary(summary)
