"""`python -m spray evaluate`: the faithfulness of each attribution method, to choose one (spray.methods)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from audit_cases import tiny_config, write_config

from spray.cli import main
from spray.config import LrpAttribution, attribution_config, load_config
from spray.data import Sample
from spray.errors import EXIT_CONFIG, EXIT_DATA, EXIT_MODEL, EXIT_OK, ConfigError
from spray.faithfulness import sampled_rows
from spray.methods import (
    METHOD_NAMES,
    EvaluationSetting,
    MethodComparison,
    MethodScore,
    class_sample,
    compare_methods,
    format_table,
    overall_score,
    resolve_methods,
    write_comparison,
)
from spray.names import COMPOSITE_NAMES
from spray.pipeline import run_audit

# ------------------------------------------------------------------------------------------------------
# which methods, with which settings


def test_by_default_the_configured_attribution_comes_first_then_every_composite_and_three_gradient_methods():
    configured = LrpAttribution(composite="epsilon_gamma_box", gamma=0.5, batch_size=7)
    methods = resolve_methods(configured)
    names = [spec.name for spec in methods]
    assert names[0] == "epsilon_gamma_box" and methods[0].configured and methods[0].attribution is configured
    assert sorted(names) == sorted([*COMPOSITE_NAMES, "gradient", "gradient_x_input", "integrated_gradients"])
    assert [spec.configured for spec in methods].count(True) == 1


def test_other_composites_keep_the_lrp_parameters_but_not_the_rules_and_every_method_the_runtime_settings():
    rules = [{"layers": ["linear"], "rule": "epsilon", "epsilon": 0.1}]
    configured = LrpAttribution(composite="epsilon_plus_flat", epsilon=0.01, rules=rules, batch_size=7,
                                shard_size=3, device="cpu")
    by_name = {spec.name: spec.attribution for spec in resolve_methods(configured, ["epsilon", "gradient",
                                                                                    "epsilon_plus_flat"])}
    assert by_name["epsilon_plus_flat"] is configured  # the configured section as it is, rules included
    other = by_name["epsilon"]
    assert isinstance(other, LrpAttribution) and other.epsilon == 0.01 and other.rules is None
    for section in by_name.values():
        assert (section.batch_size, section.shard_size, section.device) == (7, 3, "cpu")
    assert by_name["gradient"].method == "gradient"


def test_a_configured_gradient_method_is_its_own_row_and_repeats_are_dropped():
    configured = attribution_config(method="integrated_gradients", steps=4)
    methods = resolve_methods(configured, ["integrated_gradients", "epsilon", "integrated_gradients"])
    assert [(spec.name, spec.configured) for spec in methods] == [("integrated_gradients", True), ("epsilon", False)]
    assert methods[0].attribution.steps == 4


def test_an_unknown_method_is_named_with_the_closest_valid_name_and_the_list():
    with pytest.raises(ConfigError) as raised:
        resolve_methods(LrpAttribution(), ["gradient", "epsilon_plsu"])
    message = str(raised.value)
    assert "'epsilon_plsu'" in message and "did you mean 'epsilon_plus'" in message
    assert all(name in message for name in METHOD_NAMES)
    with pytest.raises(ConfigError, match="no method given"):
        resolve_methods(LrpAttribution(), [])


def test_every_method_explains_the_same_sample_of_a_class_the_evaluate_stage_draws():
    samples = [Sample(id=f"s{i}", path=Path(f"s{i}.png"), label=0) for i in range(40)]
    chosen = class_sample(samples, 10, seed=3)
    assert [s.id for s in chosen] == [f"s{i}" for i in sampled_rows(40, 10, seed=3)]
    assert class_sample(samples[:5], 10, seed=3) == samples[:5]


# ------------------------------------------------------------------------------------------------------
# the table and the files


def _score(method: str, index: int, gain: float, ms: float | None = 1.0, n: int = 4) -> MethodScore:
    return MethodScore(method, index, f"c{index}", n, gain + 1.0, 1.0, gain, ms, int(n > 0 and not gain > 0))


def test_over_all_classes_each_class_counts_alike_and_unmeasured_classes_are_left_out():
    scores = [_score("m", 0, 2.0, ms=1.0, n=4), _score("m", 1, -1.0, ms=3.0, n=12), _score("m", 2, math.nan, n=0)]
    overall = overall_score("m", scores)
    assert overall.aopc_gain == pytest.approx(0.5) and overall.aopc_morf == pytest.approx(1.5)
    assert overall.n == 16 and overall.ms_per_image == pytest.approx((4 * 1.0 + 12 * 3.0) / 16)
    assert overall.not_better == 1  # the class with a negative gain; the unmeasured one is not counted
    assert overall_score("m", [_score("m", 0, 1.0, ms=None)]).ms_per_image is None


def _comparison() -> MethodComparison:
    methods = tuple(resolve_methods(LrpAttribution(), ["epsilon_plus_flat", "gradient"]))
    scores = (_score("epsilon_plus_flat", 0, 2.0), _score("gradient", 0, -0.5, ms=None),
              _score("epsilon_plus_flat", 1, 1.0), _score("gradient", 1, math.nan, n=0))
    overall = tuple(overall_score(spec.name, [s for s in scores if s.method == spec.name]) for spec in methods)
    return MethodComparison(methods, scores, overall, EvaluationSetting(32, 0, 9, 16, "blur"),
                            {"attribute": {"computed": 4, "cached": 0}, "evaluate": {"computed": 4, "cached": 0}}, ())


def test_the_table_shows_each_class_and_method_and_names_the_highest_mean_gain():
    text = format_table(_comparison())
    assert "class 0 c0" in text and "class 1 c1" in text
    assert "epsilon_plus_flat (configured)" in text
    assert "highest mean gain: epsilon_plus_flat (configured) (1.50 logits)" in text
    assert "9-pixel patches, 16 steps, blur" in text


def test_the_files_hold_every_class_and_method_with_missing_numbers_empty_or_null(tmp_path):
    csv_path, json_path = write_comparison(_comparison(), tmp_path / "out")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["class"]) for r in rows] == [
        ("epsilon_plus_flat", "0"), ("gradient", "0"), ("epsilon_plus_flat", "1"), ("gradient", "1")]
    assert float(rows[0]["aopc_gain"]) == 2.0 and rows[1]["ms_per_image"] == "" and rows[3]["aopc_gain"] == ""
    document = json.loads(json_path.read_text())  # strict JSON: no NaN
    assert document["setting"]["steps"] == 16
    assert [m["name"] for m in document["methods"]] == ["epsilon_plus_flat", "gradient"]
    assert document["methods"][0]["attribution"]["composite"] == "epsilon_plus_flat"
    assert document["overall"][0]["aopc_gain"] == pytest.approx(1.5)
    assert document["classes"][3]["aopc_gain"] is None


# ------------------------------------------------------------------------------------------------------
# the command


def test_an_unknown_method_on_the_command_line_is_a_config_error_before_any_work(tiny_case, capsys):
    path = write_config(tiny_case, tiny_config(tiny_case))
    assert main(["evaluate", str(path), "--methods", "gradient,smoothgard"]) == EXIT_CONFIG
    error = capsys.readouterr().err
    assert "'smoothgard'" in error and "did you mean 'smoothgrad'" in error
    assert not (tiny_case / "cache").exists()


def test_a_missing_manifest_is_a_data_error(tiny_case, capsys):
    config = tiny_config(tiny_case, data={"manifest": "images/missing.csv", "image": {"mode": "L", "size": [16, 16]}})
    assert main(["evaluate", str(write_config(tiny_case, config)), "--methods", "gradient"]) == EXIT_DATA
    assert "missing.csv" in capsys.readouterr().err


GATED_MODEL = '''
import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.linear((h * torch.sigmoid(h)).flatten(1))
'''


def test_a_composite_that_cannot_explain_the_model_is_a_model_error_naming_the_method(tiny_case, capsys):
    (tiny_case / "gated.py").write_text(GATED_MODEL)
    config = tiny_config(tiny_case, model={"factory": "gated.py:Gated"}, attribution={"method": "gradient"})
    path = write_config(tiny_case, config)
    assert main(["evaluate", str(path), "--methods", "gradient,epsilon", "--quiet"]) == EXIT_MODEL
    error = capsys.readouterr().err
    assert "method epsilon cannot explain this model" in error and "gating" in error


@pytest.mark.e2e
def test_evaluate_prints_and_stores_the_table_and_a_second_run_computes_nothing(tiny_case, capsys):
    config = tiny_config(tiny_case, evaluation={"samples": 6, "patch_size": 4, "steps": 6})
    path = write_config(tiny_case, config)
    command = ["evaluate", str(path), "--methods", "epsilon_plus_flat,gradient,integrated_gradients", "--quiet"]
    assert main(command) == EXIT_OK
    out = capsys.readouterr().out
    assert "attribute 9/9, evaluate 9/9" in out  # 3 methods x 3 classes, one shard each
    assert "epsilon_plus_flat (configured)" in out and "integrated_gradients" in out and "ms/image" in out
    with open(tiny_case / "report" / "methods.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {r["n"] for r in rows} == {"6"}
    assert all(float(r["ms_per_image"]) > 0 for r in rows)
    for row in rows:
        assert float(row["aopc_gain"]) == pytest.approx(float(row["aopc_morf"]) - float(row["aopc_random"]))
    assert main(command) == EXIT_OK
    assert "attribute 0/9, evaluate 0/9" in capsys.readouterr().out


@pytest.mark.e2e
def test_the_configured_method_shares_the_audits_entries_and_reads_its_faithfulness(tiny_case):
    # with the whole class sampled, the configured method's shards are the audit's: nothing is computed again
    config = load_config(write_config(tiny_case, tiny_config(tiny_case, evaluation={"samples": 50, "patch_size": 4,
                                                                                    "steps": 6})))
    audited = run_audit(config, progress=False)
    comparison = compare_methods(config, ["epsilon_plus_flat"], progress=False)
    assert comparison.stages == {"attribute": {"computed": 0, "cached": 6}, "evaluate": {"computed": 0, "cached": 3}}
    for result, score in zip(audited.classes, comparison.scores):
        assert result.faithfulness is not None and score.class_index == result.class_index
        assert score.n == result.faithfulness.summary.n == 24
        assert score.aopc_gain == pytest.approx(result.faithfulness.summary.aopc_gain)
