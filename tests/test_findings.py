"""One shortcut, one finding: a pattern that moves is found wherever it sits, a thin frame is found whole, and
flagged groups that share their carriers are reported as one finding.

The models here are stand-ins that read a planted shortcut exactly (a ring anywhere, a frame), so that the
flagging mechanism is specified without training; tests/test_flagging.py and benchmarks/shortcut_kinds.py
measure it on trained models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spray.config import FlaggingConfig, ImageConfig
from spray.flag import ClusterEvidence, Evidence, array_batches, form_findings, score_clusters
from spray.flag.evidence import Line

IMAGE = ImageConfig(mode="L", size=(32, 32), mean=[0.0], std=[1.0])
RING = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]], np.float32)


class _RingReader(torch.nn.Module):
    """Class 0's logit: how strongly a 5 x 5 ring appears anywhere in the image (a shortcut that moves), and
    more weakly the centre."""

    def __init__(self) -> None:
        super().__init__()
        kernel = torch.from_numpy(RING - RING.mean())
        self.register_buffer("kernel", kernel[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ring = F.conv2d(x[:, :1], self.kernel).amax((1, 2, 3)) / 4
        centre = x[:, 0, 12:20, 12:20].mean((1, 2))
        return torch.stack([3 * ring + centre, 1 - ring], 1)


class _FrameReader(torch.nn.Module):
    """Class 0's logit: the brightness of the 2 px frame around the image (a thin border), and the centre."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame = torch.ones(x.shape[2:], dtype=torch.bool)
        frame[2:-2, 2:-2] = False
        border = x[:, 0][:, frame].mean(1)
        centre = x[:, 0, 12:20, 12:20].mean((1, 2))
        return torch.stack([4 * border + centre, 1 - border], 1)


def _class_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 1) images of a class (noise and a bright centre) and (n, 16, 16) maps on the centre."""
    pixels = rng.uniform(0, 0.3, size=(n, 32, 32, 1)).astype(np.float32)
    pixels[:, 12:20, 12:20] += 0.4
    maps = rng.uniform(0, 0.05, size=(n, 16, 16)).astype(np.float32)
    maps[:, 6:10, 6:10] += 0.3
    return pixels, maps


def _other_class_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 32, 32, 1) images of the other class: noise without the bright centre, so the stand-ins predict
    them as class 1 until a shortcut is pasted in."""
    return rng.uniform(0, 0.3, size=(n, 32, 32, 1)).astype(np.float32)


def _moving_ring_class(n: int = 80, carriers: int = 24, seed: int = 0):
    """The first ``carriers`` images carry a ring on a dark plate at a random place, and their maps put
    relevance there; spectral labels follow the ring's quadrant, mixed with as many samples without it."""
    rng = np.random.default_rng(seed)
    pixels, maps = _class_images(n, rng)
    labels = rng.integers(0, 4, n)
    for i in range(carriers):
        top, left = (int(v) for v in rng.integers(1, 32 - 8, 2))
        pixels[i, top : top + 7, left : left + 7] = 0.05
        pixels[i, top + 1 : top + 6, left + 1 : left + 6, 0] = np.where(RING > 0, 0.95, 0.05)
        maps[i, (top + 3) // 2, (left + 3) // 2] += 2.0
        maps[i, (top + 3) // 2 - 1 : (top + 3) // 2 + 2, (left + 3) // 2 - 1 : (left + 3) // 2 + 2] += 0.5
        labels[i] = 2 * (top >= 12) + (left >= 12)
    recipients = _other_class_images(40, rng)
    return pixels, maps, labels, recipients


def _framed_class(n: int = 60, carriers: int = 18, seed: int = 0):
    """The first ``carriers`` images have a bright 2 px frame; their maps see only its top edge (as a heatmap
    downsized below the frame's width does); spectral cluster 0 holds them and two samples without it."""
    rng = np.random.default_rng(seed)
    pixels, maps = _class_images(n, rng)
    frame = np.ones((32, 32), bool)
    frame[2:-2, 2:-2] = False
    pixels[:carriers, frame] = 0.95
    maps[:carriers, 0, :] += 1.0
    labels = np.where(np.arange(n) < carriers + 2, 0, 1 + np.arange(n) % 2)
    recipients = _other_class_images(40, rng)
    return pixels, maps, labels, recipients


def _findings(model: torch.nn.Module, pixels, maps, labels, recipients):
    scored = score_clusters(model, 0, array_batches(pixels), maps, labels, recipients, IMAGE,
                            FlaggingConfig(min_cluster_size=5))
    return scored, form_findings(labels, scored)


def _precision_recall(members: np.ndarray, planted: np.ndarray) -> tuple[float, float]:
    hit = (members & planted).sum()
    return hit / max(members.sum(), 1), hit / planted.sum()


def test_a_pattern_that_moves_is_one_finding_with_its_carriers_wherever_it_sits():
    pixels, maps, labels, recipients = _moving_ring_class()
    planted = np.arange(len(pixels)) < 24
    scored, joined = _findings(_RingReader(), pixels, maps, labels, recipients)
    assert not any(s.flagged for s in scored if s.id >= 0)  # no spectral cluster holds the ring alone
    (finding,) = joined.findings
    assert finding.anywhere and finding.evidence.flagged
    precision, recall = _precision_recall(joined.labels == finding.cluster, planted)
    assert precision >= 0.9 and recall >= 0.9
    spread = finding.windows[:, :2].std(0)
    assert (spread > 3).all()  # found at many places, each member at its own
    assert finding.prototype.shape[:2] == tuple(finding.windows[0, 2:])  # the mean pattern, at a window's size


def test_a_thin_frame_seen_on_one_edge_is_found_whole():
    pixels, maps, labels, recipients = _framed_class()
    planted = np.arange(len(pixels)) < 18
    _scored, joined = _findings(_FrameReader(), pixels, maps, labels, recipients)
    (finding,) = joined.findings
    assert not finding.anywhere and finding.cluster == 0
    assert finding.evidence.necessity is not None and finding.evidence.necessity.passed
    assert tuple(finding.windows[0]) == (0, 0, 32, 32)  # the region grew along the whole frame
    frame = np.ones((32, 32), bool)
    frame[2:-2, 2:-2] = False
    assert (finding.prototype[..., 0][frame] > 0.8).all()
    precision, recall = _precision_recall(joined.labels == 0, planted)
    assert precision == 1.0 and recall == 1.0
    # the two members of the flagged spectral cluster without the frame are a cluster of their own, unflagged
    (rest,) = [c for c in joined.clusters if c.id not in (0, 1, 2)]
    assert rest.size == 2 and not rest.flagged and "do not carry its pattern" in rest.evidence.not_scored


def test_a_frame_that_no_spectral_cluster_holds_is_found_through_its_pattern_carriers():
    # spectral labels ignore the frame, and the maps see only one corner of it: the corner is a pattern found
    # anywhere, and its carriers measured at one place grow the region along the whole frame
    pixels, maps, _labels, recipients = _framed_class()
    maps[:18, 0, :] -= 1.0
    maps[:18, :2, :2] += 1.0
    labels = np.random.default_rng(1).integers(0, 3, len(pixels))
    planted = np.arange(len(pixels)) < 18
    scored, joined = _findings(_FrameReader(), pixels, maps, labels, recipients)
    assert not any(s.flagged for s in scored if s.id >= 0)
    in_place = [s for s in scored if s.id <= -101 and s.flagged]
    assert in_place and tuple(in_place[0].windows.box(0)) == (0, 0, 32, 32)
    (finding,) = joined.findings
    precision, recall = _precision_recall(joined.labels == finding.cluster, planted)
    assert precision >= 0.9 and recall >= 0.9


def test_members_that_agree_over_most_of_the_image_are_crops_of_one_scene_not_a_grown_region():
    from spray.flag.plan import MAX_GROWN_AREA, ClusterPlan, Windows, grow_region

    rng = np.random.default_rng(0)
    scene = rng.uniform(0, 1, (32, 32)).astype(np.float32)
    grey = rng.uniform(0, 1, (40, 32, 32)).astype(np.float32)
    members = np.arange(40) < 20
    grey[members] = scene + rng.normal(0, 0.01, (20, 32, 32))  # one scene, everywhere alike
    mask = np.zeros((32, 32), bool)
    mask[14:18, 14:18] = True
    plan = ClusterPlan(0, members, mask, mask, (np.zeros(0, int), np.zeros(0, int)),
                       Windows.fixed(40, 14, 14, 4, 4), mask[14:18, 14:18])
    assert grow_region(plan, grey) is plan  # growing would cover more than MAX_GROWN_AREA of the image
    grey[members] = rng.uniform(0, 1, (20, 32, 32))
    grey[members, :12, :12] = scene[:12, :12]  # agreeing on a patch only: that patch is grown over
    corner = np.zeros((32, 32), bool)
    corner[2:6, 2:6] = True
    grown = grow_region(ClusterPlan(0, members, corner, corner, plan.donors, Windows.fixed(40, 2, 2, 4, 4),
                                    corner[2:6, 2:6]), grey)
    assert grown.mask[:12, :12].all() and grown.mask.mean() <= MAX_GROWN_AREA


def test_at_one_place_a_sample_joins_when_the_strongest_group_or_two_groups_carry_it():
    from spray.flag.plan import Windows

    labels = np.repeat([0, 1, 2], 10)
    strong, loose = labels == 0, labels < 2
    frame = Windows.fixed(30, 0, 0, 32, 32)
    corner = Windows.fixed(30, 0, 0, 8, 8)

    def at(cluster_id: int, score: float, members: np.ndarray, windows: Windows) -> ClusterEvidence:
        evidence = Evidence(score=score, flagged=True, consistency=Line("consistency", 0.95, 0.9),
                            weakest="consistency")
        return ClusterEvidence(cluster_id, int(members.sum()), evidence, None, members=members, windows=windows)

    (finding,) = form_findings(labels, [at(-101, 1.3, strong, frame), at(-102, 1.1, loose, frame)]).findings
    assert finding.size == 10 and finding.groups == (-101, -102)  # cluster 1 is carried by the weaker only
    two = labels < 2
    two[10:15] = False
    groups = [at(-101, 1.3, strong, frame), at(-102, 1.1, loose, frame), at(-103, 1.0, two, frame)]
    (finding,) = form_findings(labels, groups).findings
    assert finding.size == 15  # five of cluster 1 are carried by two groups
    (finding,) = form_findings(labels, [at(-101, 1.3, strong, frame), at(-102, 1.1, loose, corner)]).findings
    assert finding.size == 20  # another place: all its carriers join


def _flagged(cluster_id: int, score: float, members: np.ndarray | None = None) -> ClusterEvidence:
    line = Line("consistency", 0.95 * score, 0.9)
    evidence = Evidence(score=score, flagged=True, consistency=line, weakest="consistency")
    return ClusterEvidence(cluster_id, int(members.sum()) if members is not None else 0, evidence, None,
                           members=members, anywhere=members is not None)


def test_flagged_groups_that_share_their_carriers_are_one_finding_under_the_strongest_cluster():
    labels = np.repeat([0, 1, 2], 10)  # clusters 0 and 1: the shortcut at two places; cluster 2: clean
    pattern = labels < 2  # a pattern found anywhere holds both
    scored = [_flagged(0, 1.3), _flagged(1, 1.1), ClusterEvidence(2, 10, Evidence(score=0.2), None),
              _flagged(-1, 1.2, pattern)]
    joined = form_findings(labels, scored)
    (finding,) = joined.findings
    assert finding.cluster == 0 and finding.groups == (0, -1, 1) and finding.clusters == {0: 10, 1: 10}
    assert (joined.labels[:20] == 0).all() and (joined.labels[20:] == 2).all()
    by_id = {c.id: c for c in joined.clusters}
    assert by_id[0].size == 20 and by_id[0].flagged and by_id[0].evidence.joined_by_pattern == 10
    assert by_id[1].size == 0 and not by_id[1].flagged  # its members moved to the finding's cluster
    assert (labels == np.repeat([0, 1, 2], 10)).all()  # the input is kept


def test_flagged_groups_without_shared_carriers_are_separate_findings():
    labels = np.repeat([0, 1, 2], 10)
    scored = [_flagged(0, 1.3), _flagged(1, 1.1), ClusterEvidence(2, 10, Evidence(score=0.2), None)]
    joined = form_findings(labels, scored)
    assert [f.cluster for f in joined.findings] == [0, 1]


def test_the_report_and_summary_list_each_finding_with_its_clusters_pattern_and_evidence(tmp_path):
    import json

    from spray.report import write_report
    from spray.report.schema import validate_summary
    from spray.report.synthetic import synthetic_class, synthetic_run
    from spray.results import FindingResult

    result = synthetic_class(0, "zero", n_clusters=3, per_cluster=10, flagged_cluster=0, seed=0)
    flagged = next(c for c in result.clusters if c.flagged)
    result.findings = [FindingResult(
        cluster=flagged.id, members=flagged.members, clusters={0: 6, 2: 4}, groups=[0, -1], anywhere=True,
        evidence=flagged.evidence, prototype=np.full((7, 7, 3), 0.5, np.float32),
        coverage=np.zeros((32, 32), np.float32), position_spread=0.3)]
    page = write_report(tmp_path, [result], synthetic_run()).read_text()
    block = page[page.index('<div class="findings">'):page.index('<div class="clusters-head">')]
    assert "Finding 1" in block and "Moves" in block and "6 from cluster 0, 4 from cluster 2" in block
    assert "Consistency" in block  # its evidence, with the thresholds
    summary = json.loads((tmp_path / "summary.json").read_text())
    validate_summary(summary)
    (entry,) = summary["classes"][0]["findings"]
    assert entry["cluster"] == flagged.id and entry["clusters"] == {"0": 6, "2": 4} and entry["anywhere"]
    assert entry["members"] == list(flagged.members) and np.asarray(entry["prototype"]).shape == (7, 7, 3)


def test_a_findings_coverage_shows_its_pattern_a_frame_as_a_frame():
    from spray.assemble import finding_result
    from spray.flag import Finding

    frame = np.full((32, 32, 1), np.nan, np.float32)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = 0.9, 0.9, 0.9, 0.9  # NaN: outside the pattern
    finding = Finding(cluster=0, size=3, clusters={0: 3}, groups=(0,), anywhere=False, evidence=Evidence(score=1.2),
                      prototype=frame, windows=np.tile([0, 0, 32, 32], (3, 1)))
    result = finding_result(finding, ["a", "b", "c"], np.zeros(3, int), IMAGE)
    assert result.coverage[0].min() == 1.0 and result.coverage[:, -1].min() == 1.0
    assert result.coverage[2:-2, 2:-2].max() == 0.0  # the window is the whole image, the pattern only its edge


def _audit_planted(folder, case):
    """Build a generated case (spray.planted: photo crops, a trained model) and audit every class."""
    import pandas as pd

    from spray.config import config_from_dict
    from spray.pipeline import run_audit
    from spray.planted import build_case

    build_case(folder / "case", case)
    raw = {
        "model": {"factory": "spray.planted:build_model",
                  "kwargs": {"kind": case.model, "channels": case.channels, "n_classes": case.n_classes},
                  "weights": str(folder / "case" / "model.pt")},
        "data": {"manifest": str(folder / "case" / "images" / "manifest.csv"),
                 "image": {"mode": "RGB", "size": [case.size, case.size]}},
        "attribution": {"batch_size": 128},
        "embedding": {"methods": []},
        "evaluation": {"enabled": False},
        "flagging": {"transplant_images": 100},
        "cache": {"directory": str(folder / "cache")},
        "output": str(folder / "report"),
    }
    outcome = run_audit(config_from_dict(raw, base_dir=folder), progress=False)
    return outcome, pd.read_csv(folder / "case" / "images" / "manifest.csv")


@pytest.mark.e2e
def test_a_logo_at_random_corners_and_a_thin_border_in_two_classes_are_one_finding_each(tmp_path):
    from spray.planted import Artifact, Case

    case = Case(model="cnn", seed=421, photos="scikit-learn", artifacts=(Artifact("logo", 1, 0.3, placement="corner"),
                                                  Artifact("border", 0, 0.29)))
    outcome, manifest = _audit_planted(tmp_path, case)
    for number, artifact in enumerate(case.artifacts, start=1):
        result = next(r for r in outcome.classes if r.class_index == artifact.target_class)
        (finding,) = result.findings
        planted = set(manifest.loc[manifest.artifact == number, "path"])
        flagged = {m for c in result.clusters if c.flagged for m in c.members}
        assert set(finding.members) == flagged
        hit = len(planted & flagged)
        assert hit / len(flagged) >= 0.9 and hit / len(planted) >= 0.9, artifact.kind
    assert finding.anywhere is False  # the border sits at one place
    assert not [r.class_index for r in outcome.classes if r.class_index > 1 and r.flagged]


@pytest.mark.e2e
def test_classes_made_of_two_different_photos_are_not_flagged(tmp_path):
    from spray.planted import Case

    outcome, _ = _audit_planted(tmp_path, Case(model="resnet", subgroups=True, seed=455, photos="scikit-learn"))
    assert not [r.class_index for r in outcome.classes if r.flagged]


class _AnySizeRingReader(torch.nn.Module):
    """Class 0's logit: how strongly a ring appears anywhere at either of two sizes (5 or 7 px: the 5 x 5 ring
    enlarged with nearest-neighbour sampling, so the copies differ pixel by pixel), and the centre."""

    def __init__(self) -> None:
        super().__init__()
        for side in SIDES:
            ring = _ring(side) - _ring(side).mean()
            self.register_buffer(f"kernel{side}", torch.from_numpy(ring / np.abs(ring).sum())[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ring = torch.stack([F.conv2d(x[:, :1], getattr(self, f"kernel{side}")).amax((1, 2, 3))
                            for side in SIDES], 1).amax(1) * 8
        centre = x[:, 0, 18:30, 18:30].mean((1, 2))
        # class 1 up to a ring response of about 1: the other photo's crops (ring responses up to 0.9) are class 1
        return torch.stack([3 * ring + centre, 4 - ring], 1)


SIDES = (5, 7)
LARGE = ImageConfig(mode="L", size=(48, 48), mean=[0.0], std=[1.0])


def _ring(side: int) -> np.ndarray:
    index = np.arange(side) * 5 // side
    return RING[np.ix_(index, index)]


def _scaled_ring_class(n: int = 90, carriers: int = 28, seed: int = 0):
    """48 x 48 grey crops of one of scikit-learn's photos with (24, 24) maps on the centre (recipients: crops
    of the other photo); the first ``carriers`` carry a ring of side 5 or 7 px (half each) on a dark plate at a
    random place, and their maps put relevance there."""
    from spray.planted import bundled_photos, photo_crops

    rng = np.random.default_rng(seed)
    photos = bundled_photos(scikit_learn_only=True)
    pixels = photo_crops(photos[0], n, 48, rng).mean(-1, keepdims=True)
    maps = rng.uniform(0, 0.05, size=(n, 24, 24)).astype(np.float32)
    maps[:, 9:15, 9:15] += 0.3
    labels = rng.integers(0, 3, n)
    for i in range(carriers):
        side = SIDES[i % 2]
        top, left = (int(v) for v in rng.integers(1, 48 - side - 2, 2))
        pixels[i, top : top + side + 2, left : left + side + 2] = 0.05
        pixels[i, top + 1 : top + side + 1, left + 1 : left + side + 1, 0] = np.where(_ring(side) > 0, 0.95, 0.05)
        centre = (top + 1 + side // 2) // 2, (left + 1 + side // 2) // 2
        maps[i, centre[0] - 1 : centre[0] + 2, centre[1] - 1 : centre[1] + 2] += 1.0
    recipients = photo_crops(photos[1], 40, 48, rng).mean(-1, keepdims=True)
    return pixels, maps, labels, recipients


def test_copies_of_a_pattern_that_pixels_miss_join_its_findings_by_what_they_do_to_the_model():
    from spray.flag import join_by_effect, measure_effects

    pixels, maps, labels, recipients = _scaled_ring_class()
    planted = np.arange(len(pixels)) < 28
    model, config = _AnySizeRingReader(), FlaggingConfig(min_cluster_size=5)
    scored = score_clusters(model, 0, array_batches(pixels), maps, labels, recipients, LARGE, config)
    joined = form_findings(labels, scored)
    before = np.isin(joined.labels, [f.cluster for f in joined.findings])
    assert joined.findings and (before & planted).sum() < planted.sum()  # pixels match most copies, not all
    effects = measure_effects(model, 0, array_batches(pixels), maps, recipients, LARGE, config, joined.findings)
    assert effects.gain[planted].min() > effects.gain[~planted].max()  # any ring raises the class, nothing else does
    after = join_by_effect(joined, effects)
    members = np.isin(after.labels, [f.cluster for f in after.findings])
    precision, recall = _precision_recall(members, planted)
    assert precision == 1.0 and recall >= 0.95 and members.sum() > before.sum()
    for finding in after.findings:
        assert finding.size == (after.labels == finding.cluster).sum() == len(finding.windows)
    assert sum(f.evidence.joined_by_effect for f in after.findings) == members.sum() - before.sum()


def _effects(gain: np.ndarray, resemblance: np.ndarray):
    from spray.flag import Effects
    from spray.flag.plan import Windows

    elsewhere = np.linspace(0.3, 0.7, 100)[None]  # other classes' images: up to 0.7 by chance
    return Effects(gain.astype(np.float32), Windows.fixed(len(gain), 0, 0, 4, 4), resemblance[None].astype(np.float32),
                   elsewhere)


def test_a_sample_joins_by_effect_only_when_it_also_looks_like_the_pattern():
    from spray.flag import join_by_effect
    from spray.flag.findings import JOIN_EFFECT

    labels = np.repeat([0, 1], 20)  # cluster 0 flagged; cluster 1: 10 ordinary samples, 5 copies, 5 look-alikes
    joined = form_findings(labels, [_flagged(0, 1.3), ClusterEvidence(1, 20, Evidence(score=0.2), None)])
    gain = np.r_[np.full(20, 1.0), np.full(10, 0.1), np.full(5, 0.9), np.full(5, 0.9)]
    resemblance = np.r_[np.full(20, 1.0), np.full(10, 0.5), np.full(5, 0.8), np.full(5, 0.5)]
    assert JOIN_EFFECT <= 0.8  # the copies act and look like the pattern; the look-alikes only act like it
    after = join_by_effect(joined, _effects(gain, resemblance))
    assert (after.labels[30:35] == 0).all() and (after.labels[35:] == 1).all() and (after.labels[20:30] == 1).all()
    (finding,) = after.findings
    assert finding.size == 25 and finding.clusters == {0: 20, 1: 5} and finding.evidence.joined_by_effect == 5
    by_id = {c.id: c for c in after.clusters}
    assert by_id[0].size == 25 and by_id[0].evidence.joined_by_effect == 5 and by_id[1].size == 15


def test_copies_join_when_they_look_like_the_pattern_more_than_the_class_samples_that_do_not_act_like_it():
    from spray.flag import Effects, join_by_effect
    from spray.flag.findings import MIN_NULL
    from spray.flag.plan import Windows

    # cluster 0 flagged; cluster 1: 30 ordinary samples and 6 copies at another size. The other classes'
    # images hold look-alikes (up to 0.9, e.g. photos with rings in them), the class's own samples do not
    labels = np.repeat([0, 1], [20, 36])
    joined = form_findings(labels, [_flagged(0, 1.3), ClusterEvidence(1, 36, Evidence(score=0.2), None)])
    gain = np.r_[np.full(20, 1.0), np.full(30, 0.1), np.full(6, 0.9)]
    resemblance = np.r_[np.full(20, 1.0), np.linspace(0.3, 0.6, 30), np.full(6, 0.7)]
    assert MIN_NULL <= 30  # the 30 ordinary samples are a null
    effects = Effects(gain.astype(np.float32), Windows.fixed(len(gain), 0, 0, 4, 4),
                      resemblance[None].astype(np.float32), np.linspace(0.3, 0.9, 100)[None])
    after = join_by_effect(joined, effects)
    assert (after.labels[50:] == 0).all() and (after.labels[20:50] == 1).all()
    # with fewer samples that do not act like it than MIN_NULL, only the other classes' images are the null
    kept = np.r_[np.arange(30), np.arange(50, 56)]  # 10 ordinary samples and the 6 copies
    few = form_findings(labels[kept], [_flagged(0, 1.3), ClusterEvidence(1, 16, Evidence(score=0.2), None)])
    short = Effects(gain[kept].astype(np.float32), Windows.fixed(len(kept), 0, 0, 4, 4),
                    resemblance[None, kept].astype(np.float32), np.linspace(0.3, 0.9, 100)[None])
    assert (join_by_effect(few, short).labels[20:] == 1).all()


def test_a_finding_whose_pattern_does_little_elsewhere_takes_no_one_by_effect():
    from spray.flag import join_by_effect

    labels = np.repeat([0, 1], 20)  # a frame: its corner pasted at another place adds nothing
    joined = form_findings(labels, [_flagged(0, 1.3), ClusterEvidence(1, 20, Evidence(score=0.2), None)])
    gain = np.r_[np.full(20, 0.15), np.linspace(-0.2, 0.4, 20)]
    after = join_by_effect(joined, _effects(gain, np.r_[np.full(20, 1.0), np.full(20, 0.95)]))
    assert (after.labels == labels).all() and after.findings[0].evidence.joined_by_effect == 0


def test_two_findings_whose_members_act_and_look_alike_are_one_finding():
    from spray.flag import Effects, join_by_effect
    from spray.flag.plan import Windows

    labels = np.repeat([0, 1, 2], [10, 10, 20])  # one logo in two size bands, flagged apart; cluster 2 clean
    joined = form_findings(labels, [_flagged(0, 1.3), _flagged(1, 1.1), ClusterEvidence(2, 20, Evidence(score=0.2), None)])
    assert len(joined.findings) == 2
    gain = np.repeat([1.0, 0.9, 0.1], [10, 10, 20])
    resemblance = np.stack([np.repeat([1.0, 0.7, 0.4], [10, 10, 20]), np.repeat([0.7, 1.0, 0.4], [10, 10, 20])])
    elsewhere = np.tile(np.linspace(0.3, 0.6, 50), (2, 1))
    after = join_by_effect(joined, Effects(gain, Windows.fixed(40, 0, 0, 4, 4), resemblance, elsewhere))
    (finding,) = after.findings
    assert finding.cluster == 0 and finding.size == 20 and finding.groups == (0, 1)
    assert finding.clusters == {0: 10, 1: 10}
    by_id = {c.id: c for c in after.clusters}
    assert by_id[1].size == 0 and not by_id[1].flagged and "merged into it" in by_id[1].evidence.not_scored
    assert (after.labels[:20] == 0).all() and (after.labels[20:] == 2).all()


def test_a_pattern_that_all_but_a_few_images_of_the_class_show_is_not_a_candidate():
    from spray.flag.passes import scan
    from spray.flag.patterns import plan_patterns

    # the class's own object in every image but two: its evidence would be measured against two samples
    pixels, maps, _labels, recipients = _moving_ring_class(n=40, carriers=38)
    config = FlaggingConfig(min_cluster_size=5)
    plans = plan_patterns(scan(array_batches(pixels), 40, (32, 32)), maps, len(recipients), config)
    assert all(5 <= plan.members.sum() <= 35 for plan in plans)
    pixels, maps, _labels, recipients = _moving_ring_class(n=40, carriers=30)
    plans = plan_patterns(scan(array_batches(pixels), 40, (32, 32)), maps, len(recipients), config)
    assert any(plan.members[:30].mean() >= 0.9 for plan in plans)  # with ten images without it, it is
