"""A series of checkpoints (model.weights a list or a glob): the config, the timeline (spray.timeline), and a
whole series audited with its cache shared."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_cases import make_tiny_case, tiny_config, write_config

from spray.cli import main
from spray.config import load_config
from spray.errors import EXIT_CONFIG, EXIT_FLAGGED, EXIT_OK, ConfigError
from spray.report.schema import validate_summary
from spray.timeline import (
    CSV_COLUMNS,
    CheckpointState,
    ClassState,
    ClusterState,
    build_timeline,
    follow_patterns,
)

# --- the config ----------------------------------------------------------------------------------------------


def _weights_files(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def test_a_glob_is_a_series_ordered_by_name_with_numbers_compared_as_numbers(tiny_case, tiny_audit):
    _weights_files(tiny_case, ["ckpt/epoch-10.pt", "ckpt/epoch-2.pt", "ckpt/epoch-1.pt", "ckpt/notes.txt"])
    config = load_config(tiny_audit(model={"factory": "models.py:build", "weights": "ckpt/epoch-*.pt"}))
    assert config.model.is_series
    assert [p.name for p in config.model.weights] == ["epoch-1.pt", "epoch-2.pt", "epoch-10.pt"]


def test_a_list_keeps_its_order_and_a_single_path_stays_a_single_path(tiny_case, tiny_audit):
    _weights_files(tiny_case, ["b.pt", "a.pt"])
    listed = load_config(tiny_audit(model={"factory": "models.py:build", "weights": ["b.pt", "a.pt"]}))
    assert [p.name for p in listed.model.weights] == ["b.pt", "a.pt"]
    single = load_config(tiny_audit())
    assert single.model.weights == tiny_case / "model.pt" and not single.model.is_series


def test_a_glob_matching_nothing_is_a_config_error_naming_the_key_and_the_pattern(tiny_case, tiny_audit):
    with pytest.raises(ConfigError, match=r"model\.weights: the pattern .*ckpt/epoch-\*\.pt matches no file") as error:
        load_config(tiny_audit(model={"factory": "models.py:build", "weights": "ckpt/epoch-*.pt"}))
    assert error.value.exit_code == EXIT_CONFIG


def test_a_missing_or_repeated_file_of_a_list_is_a_config_error_naming_its_position(tiny_case, tiny_audit, capsys):
    _weights_files(tiny_case, ["a.pt"])
    path = tiny_audit(model={"factory": "models.py:build", "weights": ["a.pt", "gone.pt"]})
    assert main(["run", str(path), "--quiet"]) == EXIT_CONFIG
    assert "model.weights[1]: weights file not found: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"model\.weights\[1\]: .*a\.pt is listed twice"):
        load_config(tiny_audit(model={"factory": "models.py:build", "weights": ["a.pt", "./a.pt"]}))
    with pytest.raises(ConfigError, match=r"model\.weights: expected a weights file, a glob pattern or a non-empty"):
        load_config(tiny_audit(model={"factory": "models.py:build", "weights": []}))


# --- following patterns ----------------------------------------------------------------------------------------

IDS = [f"s{i}" for i in range(40)]
CORNER = np.zeros((4, 4), bool)
CORNER[3, 3] = True


def _class(clusters: list[tuple[range, float, bool]], region: np.ndarray | None = None) -> ClassState:
    """Class 3 at one checkpoint: clusters of (member numbers, score, flagged), every region ``region``."""
    states = tuple(ClusterState(number, frozenset(IDS[i] for i in members), score, flagged, region)
                   for number, (members, score, flagged) in enumerate(clusters))
    return ClassState(3, "three", frozenset(IDS), 0.9, states)


def test_a_pattern_is_first_flagged_where_its_cluster_first_passes_and_followed_before_and_after():
    states = [_class([(range(0, 30), 0.2, False), (range(30, 40), 0.3, False)]),
              _class([(range(0, 28), 0.1, False), (range(28, 40), 0.8, False)]),
              _class([(range(0, 29), 0.1, False), (range(29, 40), 1.3, True)]),
              _class([(range(30, 40), 1.6, True), (range(0, 30), 0.2, False)])]
    (pattern,) = follow_patterns(states)
    assert pattern.first_flagged == 2
    assert [p.score for p in pattern.points] == [0.3, 0.8, 1.3, 1.6]
    assert [p.flagged for p in pattern.points] == [False, False, True, True]
    assert [p.cluster for p in pattern.points] == [1, 1, 1, 0]  # cluster ids change; members carry it


def _spread(*parts: tuple[list[int], float]) -> list[tuple[list[int], float, bool]]:
    return [(members, score, False) for members, score in parts]


def test_two_patterns_of_one_class_are_kept_apart_and_one_spread_over_clusters_has_no_score():
    spread = _spread(([*range(10, 13), *range(20, 30)], 0.2), ([*range(13, 17), *range(30, 35)], 0.3),
                     ([*range(17, 20), *range(35, 40)], 0.1))
    states = [_class([(range(0, 10), 1.2, True), *spread]),
              _class([(range(0, 10), 1.1, True), (range(10, 20), 1.4, True), (range(20, 40), 0.1, False)]),
              _class([(range(0, 40), 0.1, False)])]
    first, second = follow_patterns(states)
    assert (first.first_flagged, second.first_flagged) == (0, 1)
    assert [p.score for p in first.points] == [1.2, 1.1, 0.1]  # absorbed into the whole class at the end
    assert math.isnan(second.points[0].score) and second.points[0].cluster is None  # at most 4 of its 10 together


def test_where_the_members_changed_a_pattern_is_followed_by_its_region():
    before = _class([(range(0, 10), 1.2, True), (range(10, 40), 0.1, False)], region=CORNER)
    moved = ClassState(3, "three", frozenset(IDS), 0.9, (
        ClusterState(0, frozenset(IDS[20:30]), 1.5, True, CORNER),
        ClusterState(1, frozenset(IDS[:20] + IDS[30:]), 0.1, False, None)))
    (pattern,) = follow_patterns([before, moved])
    assert pattern.points[1].matched_by == "region" and pattern.points[1].cluster == 0


def test_the_timeline_has_one_step_per_checkpoint_and_says_where_a_class_was_skipped():
    flagged = _class([(range(0, 10), 1.2, True), (range(10, 40), 0.4, False)])
    skipped = dataclasses.replace(flagged, clusters=(), skipped="2 usable samples")
    timeline = build_timeline([CheckpointState("a.pt", {3: skipped}, {}),
                               CheckpointState("b.pt", {3: flagged}, {})], threshold=1.0)
    (item,) = timeline.classes
    assert [s.n_clusters for s in item.steps] == [None, 2] and item.steps[0].skipped == "2 usable samples"
    assert item.steps[1].max_score == 1.2 and item.patterns[0].first_flagged == 1
    rows = list(csv.DictReader(io.StringIO(timeline.csv_text())))
    assert [r["checkpoint"] for r in rows] == ["0", "1"] and rows[1]["first_flagged"] == "1"
    assert tuple(rows[0]) == CSV_COLUMNS
    json.dumps(timeline.to_dict(), allow_nan=False)


# --- a whole series ------------------------------------------------------------------------------------------


def _flag_class_0_for(monkeypatch: pytest.MonkeyPatch, weights: Path) -> None:
    """The flag stage flags class 0's first scored cluster for the model with ``weights`` only."""
    import spray.flag

    measured = spray.flag.score_clusters
    marker = next(iter(torch.load(weights, weights_only=True).values()))

    def scored_with_flags(model, class_index, *args, **kwargs):
        scored = measured(model, class_index, *args, **kwargs)
        this = torch.equal(next(iter(model.state_dict().values())), marker)
        return [dataclasses.replace(s, evidence=dataclasses.replace(
            s.evidence, flagged=this and class_index == 0 and number == 0)) for number, s in enumerate(scored)]

    monkeypatch.setattr(spray.flag, "score_clusters", scored_with_flags)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """The tiny case with checkpoints a, b (other weights) and c (a copy of b's bytes)."""
    folder = make_tiny_case(tmp_path_factory.mktemp("series") / "case")
    (folder / "ckpt").mkdir()
    shutil.copy(folder / "model.pt", folder / "ckpt" / "a.pt")
    state = torch.load(folder / "model.pt", weights_only=True)
    torch.save({k: v * 1.5 for k, v in state.items()}, folder / "ckpt" / "b.pt")
    shutil.copy(folder / "ckpt" / "b.pt", folder / "ckpt" / "c.pt")
    return folder


@pytest.mark.e2e
def test_a_series_reports_its_last_checkpoint_with_a_timeline_and_shares_its_cache(series, monkeypatch, capsys):
    import spray.data

    hashed: dict[str, int] = {}
    digest = spray.data.file_digest

    def counted(path):
        hashed[str(path)] = hashed.get(str(path), 0) + 1
        return digest(path)

    monkeypatch.setattr(spray.data, "file_digest", counted)
    _flag_class_0_for(monkeypatch, series / "ckpt" / "b.pt")
    config = write_config(series, tiny_config(series, model={"factory": "models.py:build", "weights": "ckpt/*.pt"},
                                              audit={"classes": [0, 1]}))
    assert main(["run", str(config), "--quiet", "--fail-on-flag"]) == EXIT_FLAGGED  # flagged at the last one
    assert "pattern 1 first flagged at ckpt/b.pt" in capsys.readouterr().out
    summary = json.loads((series / "report" / "summary.json").read_text())
    validate_summary(summary)
    timeline = summary["timeline"]
    assert [c["weights"] for c in timeline["checkpoints"]] == ["ckpt/a.pt", "ckpt/b.pt", "ckpt/c.pt"]
    (pattern,) = timeline["classes"][0]["patterns"]
    assert pattern["first_flagged"] == 1 and [p["flagged"] for p in pattern["points"]] == [False, True, True]
    assert [len(c["checkpoints"]) for c in timeline["classes"]] == [3, 3]
    # c holds b's bytes: every entry of c comes from b's; a and b computed their own
    stages = [c["stages"] for c in timeline["checkpoints"]]
    assert all(counts["computed"] == 0 for counts in stages[2].values())
    assert stages[0]["attribute"] == stages[1]["attribute"] == {"computed": 4, "cached": 0}
    assert summary["run"]["stages"]["attribute"] == {"computed": 8, "cached": 4}
    # every image file is read for its digest once in the whole series
    assert hashed and max(hashed.values()) == 1
    rows = list(csv.DictReader(io.StringIO((series / "report" / "timeline.csv").read_text())))
    assert len(rows) == 6 and {r["class"] for r in rows} == {"0", "1"}
    assert "Across checkpoints" in (series / "report" / "index.html").read_text()


@pytest.mark.e2e
def test_a_series_audited_again_computes_nothing_and_a_single_checkpoint_has_no_timeline(series, capsys):
    config = write_config(series, tiny_config(series, model={"factory": "models.py:build", "weights": "ckpt/*.pt"},
                                              audit={"classes": [0, 1]}))
    assert main(["run", str(config), "--quiet"]) in (EXIT_OK,)
    summary = json.loads((series / "report" / "summary.json").read_text())
    assert all(counts["computed"] == 0 for counts in summary["run"]["stages"].values())
    single = write_config(series, tiny_config(series, model={"factory": "models.py:build", "weights": "ckpt/b.pt"},
                                              audit={"classes": [0, 1]}, output="single"), name="single.yaml")
    assert main(["run", str(single), "--quiet"]) == EXIT_OK
    document = json.loads((series / "single" / "summary.json").read_text())
    assert "timeline" not in document and not (series / "single" / "timeline.csv").exists()
    assert all(counts["computed"] == 0 for counts in document["run"]["stages"].values())  # b's entries


def test_the_report_draws_the_timeline_and_writes_it_to_summary_json_and_timeline_csv(tmp_path):
    from spray.report import write_report
    from spray.report.synthetic import synthetic_class, synthetic_run

    checkpoints = [synthetic_class(3, "three", n_clusters=3, per_cluster=8, n_prototypes=2, embeddings=(),
                                   flagged_cluster=flagged, seed=0) for flagged in (None, None, 0)]
    states = [CheckpointState.of(f"ckpt/epoch-{e}.pt", [result], [], {}) for e, result in enumerate(checkpoints)]
    timeline = build_timeline(states, threshold=1.0)
    assert timeline.classes[0].patterns[0].first_flagged == 2
    write_report(tmp_path, [checkpoints[-1]], synthetic_run(), workers=1, timeline=timeline)
    page = (tmp_path / "index.html").read_text()
    assert "Across checkpoints" in page and 'alt="Clever Hans score of each flagged pattern of class 3' in page
    assert "first flagged at checkpoint <b>epoch-2</b>" in page
    summary = json.loads((tmp_path / "summary.json").read_text())
    validate_summary(summary)
    assert summary["timeline"]["classes"][0]["patterns"][0]["first_flagged_weights"] == "ckpt/epoch-2.pt"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "timeline.csv").read_text())))
    assert [(r["checkpoint"], r["flagged"]) for r in rows] == [("0", "0"), ("1", "0"), ("2", "1")]


@pytest.mark.e2e
def test_validate_checks_every_checkpoint_of_a_series(series, capsys):
    config = write_config(series, tiny_config(series, model={"factory": "models.py:build", "weights": "ckpt/*.pt"}),
                          name="validate.yaml")
    assert main(["validate", str(config)]) == EXIT_OK
    assert "a series of 3 checkpoints, each loaded and checked" in capsys.readouterr().out
    torch.save({"wrong": torch.zeros(1)}, series / "ckpt" / "d.pt")
    try:
        assert main(["validate", str(config)]) == 4  # the misfit checkpoint is a model error naming it
        assert "d.pt do not fit the model" in capsys.readouterr().err
    finally:
        (series / "ckpt" / "d.pt").unlink()
