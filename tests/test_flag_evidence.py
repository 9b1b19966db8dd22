"""Specification of a cluster's verdict (``spray.flag.weigh``) and of its typed evidence (``Evidence``): the
score is the weakest line's ratio measured / threshold, and what summary.json stores reads back unchanged."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spray.flag import (
    CONSISTENCY,
    DECISION,
    NECESSITY,
    SUFFICIENCY,
    Evidence,
    Measured,
    Transplant,
    decision_statistic,
    weigh,
)

PASTED = Transplant(gain=0.5, gain_control=0.1, flip_rate=0.4, flip_rate_control=0.02, flip_statistic=5.6)


def measured(consistency: float = 0.95, drop: float = 0.6, drop_rest: float = 0.2,
             transplant: Transplant | None = PASTED) -> Measured:
    return Measured(region_area=0.04, relevance_in_region=0.6, relevance_in_region_rest=0.1,
                    consistency=consistency, consistency_colour=consistency, consistency_shape=consistency - 0.1,
                    masking_drop=drop, masking_drop_rest=drop_rest, transplant=transplant)


def test_a_cluster_is_flagged_when_every_line_passes_and_its_score_is_the_weakest_ratio():
    evidence = weigh(measured(), flag_threshold=1.0)
    assert evidence.necessity.value == pytest.approx(0.4) and evidence.sufficiency.value == pytest.approx(0.4)
    assert [line.threshold for line in evidence.lines] == [CONSISTENCY, NECESSITY, SUFFICIENCY, DECISION]
    assert evidence.weakest == "consistency" and evidence.weakest_line is evidence.consistency
    assert evidence.score == pytest.approx(0.95 / CONSISTENCY) and evidence.flagged
    assert all(line.passed for line in evidence.lines) and evidence.not_scored is None


def test_one_failing_line_sets_the_score_below_one_and_no_flag():
    evidence = weigh(measured(drop=0.25), flag_threshold=1.0)  # necessity 0.05 < 0.15
    assert evidence.weakest == "necessity" and not evidence.necessity.passed
    assert evidence.score == pytest.approx(0.05 / NECESSITY) and not evidence.flagged


def test_a_region_that_raises_the_logit_but_turns_hardly_more_images_than_chance_is_not_flagged():
    # a patch of sky shared by the crops of one photo: 6 of 200 images turned against the control's 4, 3 by it alone
    # against 1 by the control alone
    turned, control = np.zeros(200, bool), np.zeros(200, bool)
    turned[:6], control[3:7] = True, True
    chance = Transplant(gain=0.5, gain_control=0.1, flip_rate=0.03, flip_rate_control=0.02,
                        flip_statistic=decision_statistic(turned, control))
    evidence = weigh(measured(transplant=chance), flag_threshold=1.0)
    assert evidence.sufficiency.passed and evidence.decision.value == pytest.approx((3 - 1 - 1) / np.sqrt(4))
    assert evidence.weakest == "decision" and not evidence.flagged


def test_the_decision_is_mcnemars_statistic_over_the_images_turned_by_one_region_and_not_the_other():
    turned, control = np.zeros(100, bool), np.zeros(100, bool)
    turned[:6] = True  # 6 images turned by the members' region only: (6 - 0 - 1) / sqrt(6)
    assert decision_statistic(turned, control) == pytest.approx(5 / np.sqrt(6)) and 5 / np.sqrt(6) > DECISION
    control[:6] = True  # the same images turned by both: nothing beyond the control
    assert decision_statistic(turned, control) == 0.0
    turned[:] = False
    assert decision_statistic(turned, control) == pytest.approx(-7 / np.sqrt(6))  # the control turns more
    assert decision_statistic(np.zeros(0, bool), np.zeros(0, bool)) == 0.0
    with pytest.raises(ValueError, match="paired by recipient"):
        decision_statistic(turned, control[:10])


def test_without_images_of_other_classes_sufficiency_is_zero_and_says_why():
    evidence = weigh(measured(transplant=None), flag_threshold=1.0)
    assert evidence.sufficiency.value == 0.0 and evidence.decision.value == 0.0 and evidence.score == 0.0 and not evidence.flagged
    assert evidence.not_scored == "no images of other classes to transplant the region into"
    assert evidence.transplant_gain is None and "transplant_gain" not in evidence.to_dict()


def test_a_line_that_is_not_a_number_is_the_weakest_and_named():
    evidence = weigh(measured(consistency=math.nan), flag_threshold=0.5)
    assert evidence.weakest == "consistency" and evidence.score == 0.0 and not evidence.flagged
    assert evidence.not_scored == "the consistency evidence is not a finite number (NaN or inf)"


def test_the_stored_evidence_lists_measurements_lines_weakest_and_thresholds_in_order():
    data = weigh(measured(), flag_threshold=1.0).joined(carriers=3, spectral_size=40).joined_effect(2).to_dict()
    assert list(data) == [
        "region_area", "relevance_in_region", "relevance_in_region_rest", "consistency", "consistency_colour",
        "consistency_shape", "masking_drop",
        "masking_drop_rest", "necessity", "transplant_gain", "transplant_gain_control", "transplant_flip_rate",
        "transplant_flip_rate_control", "sufficiency", "decision", "weakest_evidence", "thresholds",
        "joined_by_pattern", "joined_by_effect", "spectral_size",
    ]
    assert data["thresholds"] == {"consistency": CONSISTENCY, "necessity": NECESSITY, "sufficiency": SUFFICIENCY,
                                  "decision": DECISION}
    assert data["joined_by_pattern"] == 3 and data["spectral_size"] == 40 and data["joined_by_effect"] == 2
    assert Evidence(not_scored="smaller than flagging.min_cluster_size").to_dict() == {
        "not_scored": "smaller than flagging.min_cluster_size"}


def test_evidence_reads_back_from_its_json_unchanged():
    for evidence in (weigh(measured(), 1.0).joined(2, 17), weigh(measured(transplant=None), 1.0),
                     Evidence(not_scored="the whole class: nothing to compare with")):
        stored = json.loads(json.dumps(evidence.to_dict()))
        assert Evidence.from_dict(stored, score=evidence.score, flagged=evidence.flagged) == evidence


def test_evidence_of_unknown_shape_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown evidence key\(s\) \['concentration'\]"):
        Evidence.from_dict({"concentration": 0.5}, score=0.0, flagged=False)
