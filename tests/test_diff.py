"""Diff against a previous audit (spray.diff): flags matched by their members."""

import json

import pytest

from spray.diff import compare, load_baseline, snapshot_from_summary
from spray.errors import ConfigError


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
