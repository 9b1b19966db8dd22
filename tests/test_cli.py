"""`python -m spray run|validate`: what a user sees, and the exit codes a scheduled audit relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from audit_cases import tiny_config, write_config

from spray.cli import main
from spray.errors import EXIT_CONFIG, EXIT_DATA, EXIT_FLAGGED, EXIT_MODEL, EXIT_OK

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_run_prints_the_report_path_and_the_flags(tiny_audit, capsys):
    assert main(["run", str(tiny_audit()), "--quiet"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "report:" in out and "index.html" in out
    assert "tasks computed" in out


@pytest.mark.e2e
def test_output_and_classes_override_the_config(tiny_audit, tmp_path, capsys):
    output = tmp_path / "elsewhere"
    assert main(["run", str(tiny_audit()), "--quiet", "--output", str(output), "--classes", "1"]) == EXIT_OK
    summary = json.loads((output / "summary.json").read_text())
    assert [c["class"] for c in summary["classes"]] == [1]


@pytest.mark.e2e
def test_fail_on_flag_exits_non_zero_when_a_cluster_is_flagged(tiny_audit, monkeypatch, capsys):
    import dataclasses

    import spray.flag

    measured = spray.flag.score_clusters

    def first_cluster_flagged(*args, **kwargs):
        scored = measured(*args, **kwargs)
        flagged = dataclasses.replace(scored[0].evidence, flagged=True)
        return [dataclasses.replace(scored[0], evidence=flagged)] + scored[1:]

    monkeypatch.setattr(spray.flag, "score_clusters", first_cluster_flagged)
    path = tiny_audit()
    assert main(["run", str(path), "--quiet", "--no-cache", "--fail-on-flag"]) == EXIT_FLAGGED
    assert "flagged for Clever Hans evidence" in capsys.readouterr().out


def test_an_unknown_key_is_rejected_with_the_closest_valid_key(tiny_case, capsys):
    config = tiny_config(tiny_case)
    config["analysis"] = {"neighbours": 5}
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_CONFIG
    error = capsys.readouterr().err
    assert "unknown key 'analysis.neighbours'" in error and "did you mean 'analysis.neighbors'" in error


def test_a_wrong_type_is_named_by_its_key_path(tiny_case, capsys):
    config = tiny_config(tiny_case, attribution={"batch_size": "many"})
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_CONFIG
    assert "attribution.batch_size" in capsys.readouterr().err


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == EXIT_CONFIG
    assert "nope.yaml" in capsys.readouterr().err


def test_a_missing_manifest_is_a_data_error(tiny_case, capsys):
    config = tiny_config(tiny_case, data={"manifest": "images/missing.csv", "image": {"mode": "L", "size": [16, 16]}})
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_DATA
    assert "missing.csv" in capsys.readouterr().err


def test_missing_weights_are_a_model_error(tiny_case, capsys):
    config = tiny_config(tiny_case, model={"factory": "models.py:build", "weights": "gone.pt"})
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_MODEL
    assert "gone.pt" in capsys.readouterr().err


def test_weights_that_do_not_fit_exit_with_the_model_code(tiny_audit, tiny_case, capsys):
    torch.save({"0.weight": torch.zeros(2, 1, 3, 3)}, tiny_case / "model.pt")
    assert main(["run", str(tiny_audit()), "--quiet"]) == EXIT_MODEL
    assert "0.weight" in capsys.readouterr().err


def test_validate_reports_the_samples_and_missing_files(tiny_audit, tiny_case, capsys):
    (tiny_case / "images" / "c0" / "003.png").unlink()
    assert main(["validate", str(tiny_audit())]) == EXIT_OK
    out = capsys.readouterr().out
    assert "71 samples" in out and "c0/003.png" in out


def test_the_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "spray", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "validate" in result.stdout


@pytest.mark.parametrize("argv", [[], ["run"], ["frobnicate", "x.yaml"]])
def test_a_bad_command_line_exits_with_the_config_code(argv):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == EXIT_CONFIG


def test_a_demo_config_validates_before_its_case_is_built_and_names_demo_keys(tmp_path, capsys):
    demo = (ROOT / "pipelines" / "demo.yaml").read_text().replace("../", "")  # cache and report inside tmp_path
    (tmp_path / "demo.yaml").write_text(demo)
    assert main(["validate", str(tmp_path / "demo.yaml")]) == EXIT_OK
    assert f"the demo case is built in {tmp_path / 'demo-case'} on first run" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text(demo.replace("fraction: 0.25", "fraction: 2"))
    assert main(["run", str(tmp_path / "bad.yaml"), "--quiet"]) == EXIT_CONFIG
    assert "demo.fraction: Input should be less than or equal to 1" in capsys.readouterr().err
    assert not (tmp_path / "demo-case").exists()
