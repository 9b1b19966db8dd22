"""Diff against a previous audit (spray.diff): flags matched by their members."""

import dataclasses
import json
from pathlib import Path

import pytest
from audit_cases import make_tiny_case, tiny_config, write_config

from spray.cli import main
from spray.config import load_config
from spray.diff import compare, load_baseline, snapshot_from_summary
from spray.errors import EXIT_CONFIG, EXIT_FLAGGED, EXIT_OK, ConfigError
from spray.report.schema import validate_summary


def summary(classes: dict[int, list[tuple[list[str], bool, float]]]) -> dict:
    """A summary.json with the given clusters per class: (members, flagged, score)."""
    return {"classes": [
        {"class": index, "max_score": max(score for _, _, score in clusters),
         "clusters": [{"id": i, "members": members, "flagged": flagged, "score": score}
                      for i, (members, flagged, score) in enumerate(clusters)]}
        for index, clusters in classes.items()]}


def ids(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


WATERMARK = summary({3: [(ids("w", 20), True, 1.2), (ids("c", 60), False, 0.1)], 5: [(ids("f", 50), False, 0.2)]})


def test_the_same_audit_again_has_one_persisting_flag_and_nothing_new():
    diff = compare(snapshot_from_summary(WATERMARK), snapshot_from_summary(WATERMARK), "last week")
    assert (len(diff.new), len(diff.persisting), len(diff.resolved)) == (0, 1, 0)
    assert diff.persisting[0].overlap == 1.0 and diff.score_change == {3: 0.0, 5: 0.0}


def test_a_model_retrained_without_the_shortcut_resolves_the_flag():
    clean = summary({3: [(ids("w", 10) + ids("c", 30), False, 0.3), (ids("c", 30, 30), False, 0.2)],
                     5: [(ids("f", 50), False, 0.2)]})
    diff = compare(snapshot_from_summary(clean), snapshot_from_summary(WATERMARK), "last week")
    assert (len(diff.new), len(diff.persisting), len(diff.resolved)) == (0, 0, 1)
    assert diff.resolved[0].baseline.class_index == 3
    assert diff.score_change[3] == pytest.approx(0.3 - 1.2)


def test_a_shortcut_in_another_class_is_new():
    planted = summary({3: [(ids("w", 20), True, 1.2), (ids("c", 60), False, 0.1)],
                       5: [(ids("f", 35), False, 0.2), (ids("f", 15, 35), True, 1.5)]})
    diff = compare(snapshot_from_summary(planted), snapshot_from_summary(WATERMARK), "last week")
    assert [(c.class_index, c.current.cluster) for c in diff.new] == [(5, 1)]
    assert len(diff.persisting) == 1


def test_added_and_removed_images_do_not_break_the_match():
    """Half the watermarked images replaced by new ones, a few carriers joined: still the same flag."""
    changed = summary({3: [(ids("w", 10) + ids("new", 12) + ids("c", 3), True, 1.1), (ids("c", 57, 3), False, 0.1)],
                       5: [(ids("f", 50), False, 0.2)]})
    diff = compare(snapshot_from_summary(changed), snapshot_from_summary(WATERMARK), "last week")
    assert (len(diff.new), len(diff.persisting), len(diff.resolved)) == (0, 1, 0)


def test_two_groups_of_one_class_are_matched_each_to_its_own():
    before = summary({3: [(ids("a", 20), True, 1.2), (ids("b", 20), True, 1.1), (ids("c", 40), False, 0.1)]})
    now = summary({3: [(ids("b", 20), True, 1.3), (ids("a", 20) + ids("c", 40), False, 0.2)]})
    diff = compare(snapshot_from_summary(now), snapshot_from_summary(before), "last week")
    assert [(c.current.cluster, c.baseline.cluster) for c in diff.persisting] == [(0, 1)]
    assert [c.baseline.cluster for c in diff.resolved] == [0]


def test_classes_audited_in_only_one_run_are_listed():
    now = summary({3: [(ids("w", 20), True, 1.2), (ids("c", 60), False, 0.1)], 7: [(ids("s", 9), True, 1.0)]})
    diff = compare(snapshot_from_summary(now), snapshot_from_summary(WATERMARK), "last week")
    assert diff.only_now == (7,) and diff.only_before == (5,)
    assert [c.class_index for c in diff.new] == [7]
    assert diff.to_dict()["new"][0]["class"] == 7


def test_a_folder_without_a_summary_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"baseline {tmp_path}: no summary.json"):
        load_baseline(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"classes": [{"class": 1}]}))
    with pytest.raises(ConfigError, match="is not a spray summary"):
        load_baseline(tmp_path)


def test_a_class_without_a_scored_cluster_has_no_score_and_the_diff_stays_strict_json():
    unscored = summary({3: [(ids("w", 20), True, 1.2), (ids("c", 60), False, 0.1)], 5: [(ids("f", 50), False, 0.2)]})
    unscored["classes"][1]["max_score"] = None
    unscored["classes"][1]["clusters"][0]["score"] = None
    diff = compare(snapshot_from_summary(unscored), snapshot_from_summary(WATERMARK), "last week")
    document = json.loads(json.dumps(diff.to_dict(), allow_nan=False))
    assert document["score_change"]["5"] == {"baseline": 0.2, "current": None, "change": None}
    assert document["score_change"]["3"] == {"baseline": 1.2, "current": 1.2, "change": 0.0}


def test_a_summary_of_another_schema_version_is_refused(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"schema_version": 99, **WATERMARK}))
    with pytest.raises(ConfigError, match="schema_version 99"):
        load_baseline(tmp_path)


# --- the command line: --baseline, audit.baseline, --fail-on-new-flag ------------------------------------

def _flags_in(monkeypatch: pytest.MonkeyPatch, classes: set[int]) -> None:
    """Make the flag stage flag the first scored cluster of each class in ``classes`` and nothing else."""
    import spray.flag

    measured = spray.flag.score_clusters

    def scored_with_flags(model, class_index, *args, **kwargs):
        scored = measured(model, class_index, *args, **kwargs)
        return [dataclasses.replace(s, evidence=dataclasses.replace(s.evidence, flagged=class_index in classes
                                                                    and number == 0))
                for number, s in enumerate(scored)]

    monkeypatch.setattr(spray.flag, "score_clusters", scored_with_flags)


def _audit(config: Path, output: Path, *extra: str) -> int:
    """One audit of classes 0 and 1 of the tiny case; every entry recomputed (the flags are patched)."""
    return main(["run", str(config), "--quiet", "--no-cache", "--classes", "0", "1", "--output", str(output),
                 *extra])


@pytest.fixture(scope="module")
def first_audit(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny case's config and the output of a first audit with one flag, in class 0."""
    folder = make_tiny_case(tmp_path_factory.mktemp("baseline") / "case")
    config = write_config(folder, tiny_config(folder))
    with pytest.MonkeyPatch.context() as monkeypatch:
        _flags_in(monkeypatch, {0})
        assert _audit(config, folder / "first") == EXIT_OK
    return config, folder / "first"


def _diff_of(output: Path) -> dict:
    document = json.loads((output / "summary.json").read_text())
    validate_summary(document)
    return document["diff"]


@pytest.mark.e2e
def test_a_second_audit_against_the_first_has_its_flag_persisting_and_nothing_new(first_audit, monkeypatch,
                                                                                capsys):
    config, first = first_audit
    _flags_in(monkeypatch, {0})
    assert _audit(config, first.parent / "second", "--baseline", str(first), "--fail-on-new-flag") == EXIT_OK
    diff = _diff_of(first.parent / "second")
    assert (len(diff["new"]), len(diff["persisting"]), len(diff["resolved"])) == (0, 1, 0)
    assert diff["persisting"][0]["class"] == 0 and diff["persisting"][0]["overlap"] == 1.0
    assert diff["score_change"]["0"]["change"] == 0.0 and diff["baseline"] == "first"
    assert "0 new, 1 persisting, 0 resolved" in capsys.readouterr().out
    html = (first.parent / "second" / "index.html").read_text()
    assert "Since the baseline" in html and "Persisting" in html


@pytest.mark.e2e
def test_a_flag_gone_since_the_baseline_is_resolved(first_audit, monkeypatch, capsys):
    config, first = first_audit
    _flags_in(monkeypatch, set())
    assert _audit(config, first.parent / "clean", "--baseline", str(first), "--fail-on-new-flag") == EXIT_OK
    diff = _diff_of(first.parent / "clean")
    assert (len(diff["new"]), len(diff["persisting"]), len(diff["resolved"])) == (0, 0, 1)
    assert diff["resolved"][0]["class"] == 0 and diff["resolved"][0]["cluster"] is None
    assert "resolved: class 0 cluster" in capsys.readouterr().out


@pytest.mark.e2e
def test_a_flag_in_another_class_fails_the_run_with_fail_on_new_flag_and_is_named(first_audit, monkeypatch, capsys):
    config, first = first_audit
    _flags_in(monkeypatch, {0, 1})
    assert _audit(config, first.parent / "planted", "--baseline", str(first), "--fail-on-new-flag") == EXIT_FLAGGED
    diff = _diff_of(first.parent / "planted")
    assert [(c["class"], c["baseline_cluster"]) for c in diff["new"]] == [(1, None)]
    assert len(diff["persisting"]) == 1
    err = capsys.readouterr().err
    assert f"new since the baseline: class 1 cluster {diff['new'][0]['cluster']}" in err


def test_a_baseline_folder_without_a_summary_is_a_config_error_before_any_work(tiny_audit, tiny_case, capsys):
    (tiny_case / "empty").mkdir()
    assert main(["run", str(tiny_audit()), "--quiet", "--baseline", str(tiny_case / "empty")]) == EXIT_CONFIG
    assert f"baseline {tiny_case / 'empty'}: no summary.json" in capsys.readouterr().err
    assert not (tiny_case / "cache").exists()  # nothing was attributed


def test_the_command_line_baseline_wins_over_the_configs_which_resolves_beside_the_config(tiny_case, capsys):
    config = write_config(tiny_case, tiny_config(tiny_case, audit={"baseline": "last-week"}))
    assert load_config(config).audit.baseline == tiny_case.resolve() / "last-week"
    assert main(["run", str(config), "--quiet", "--baseline", str(tiny_case / "other")]) == EXIT_CONFIG
    assert f"baseline {tiny_case / 'other'}: no such folder" in capsys.readouterr().err


def test_fail_on_new_flag_without_a_baseline_is_a_config_error(tiny_audit, capsys):
    assert main(["run", str(tiny_audit()), "--quiet", "--fail-on-new-flag"]) == EXIT_CONFIG
    assert "--fail-on-new-flag compares with a baseline" in capsys.readouterr().err


def test_validate_reads_the_baseline_and_says_what_it_holds(tiny_audit, tiny_case, capsys):
    (tiny_case / "last-week").mkdir()
    (tiny_case / "last-week" / "summary.json").write_text(json.dumps(WATERMARK))
    assert main(["validate", str(tiny_audit()), "--baseline", str(tiny_case / "last-week")]) == EXIT_OK
    assert f"baseline {tiny_case / 'last-week'}: 2 audited classes, 1 flag(s)" in capsys.readouterr().out
