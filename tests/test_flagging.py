"""Flagging finds planted Clever Hans artifacts and leaves clean models alone.

The acceptance cases are digits models trained in the test (spray.demo) with artifacts, positions, classes
and fractions that differ from the built-in demo's (a watermark at the bottom right of 25 % of the 3s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spray.config import FlaggingConfig, ImageConfig
from spray.demo import case_config, load_demo, prepare_demo
from spray.flag import array_batches, distinctive_region, form_findings, score_clusters
from spray.pipeline import run_audit


def test_the_distinctive_region_is_where_members_differ_from_the_rest():
    maps = np.zeros((10, 8, 8), np.float32)
    maps[:, 3:5, 3:5] = 1.0  # every sample looks at the centre
    maps[:4, 0, 7] = 3.0  # four samples also at the top-right corner
    region = distinctive_region(maps, np.arange(10) < 4, max_fraction=0.25)
    assert region[0, 7] and region.sum() == 1


def test_the_distinctive_region_is_capped_in_area():
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(20, 8, 8)).astype(np.float32)
    members = np.arange(20) < 10
    maps[members] += 1.0  # members differ everywhere
    assert distinctive_region(maps, members, max_fraction=0.1).sum() == 6


class _CornerReader(torch.nn.Module):
    """A stand-in classifier whose class-0 logit reads the top-left 4 x 4 corner (a planted shortcut) and,
    more weakly, the centre."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, 0, :4, :4].mean((1, 2))
        centre = x[:, 0, 6:10, 6:10].mean((1, 2))
        return torch.stack([4 * corner + centre, 1 - corner], 1)


def _planted_class(n: int = 60, carriers: int = 20, seed: int = 0):
    """Images (n, 16, 16, 1) of one class whose first ``carriers`` have a bright top-left corner, maps that
    put relevance there for them, and spectral labels: 0 for the carriers, 1 and 2 for the rest."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 0.3, size=(n, 16, 16, 1)).astype(np.float32)
    pixels[:, 6:10, 6:10] += 0.5
    pixels[:carriers, :4, :4] = 1.0
    maps = rng.uniform(0, 0.1, size=(n, 16, 16)).astype(np.float32)
    maps[:, 6:10, 6:10] += 0.5
    maps[:carriers, :4, :4] += 1.0
    labels = np.where(np.arange(n) < carriers, 0, 1 + np.arange(n) % 2)
    recipients = rng.uniform(0, 0.3, size=(30, 16, 16, 1)).astype(np.float32)
    return pixels, maps, labels, recipients


IMAGE = ImageConfig(mode="L", size=(16, 16), mean=[0.0], std=[1.0])


def test_a_cluster_that_shares_a_pattern_the_model_needs_is_flagged():
    pixels, maps, labels, recipients = _planted_class()
    scored = score_clusters(_CornerReader(), 0, array_batches(pixels), maps, labels, recipients, IMAGE,
                            FlaggingConfig(min_cluster_size=5))
    by_id = {s.id: s for s in scored}
    assert by_id[0].flagged and by_id[0].region[:4, :4].sum() == by_id[0].region.sum() > 0  # inside the corner
    assert by_id[0].evidence.consistency.value > 0.9 and by_id[0].evidence.necessity.value > 0.15
    assert not by_id[1].flagged and not by_id[2].flagged


def test_the_class_streams_past_in_batches_and_the_batch_size_does_not_change_the_evidence():
    pixels, maps, labels, recipients = _planted_class()
    config = FlaggingConfig(min_cluster_size=5, fill="blur")
    largest, passes = [], []

    def batches(size):
        def read():
            passes.append(size)
            for batch in array_batches(pixels, size)():
                largest.append(len(batch))
                yield batch
        return read

    whole = score_clusters(_CornerReader(), 0, batches(len(pixels)), maps, labels, recipients, IMAGE, config)
    largest.clear()
    streamed = score_clusters(_CornerReader(), 0, batches(7), maps, labels, recipients, IMAGE, config)
    assert max(largest) == 7 and passes.count(7) == 3  # the search and two passes, one batch at a time
    for a, b in zip(whole, streamed):
        assert a.flagged == b.flagged
        for (key, value, _), (_, other, _) in zip(a.evidence.entries(), b.evidence.entries(), strict=True):
            if isinstance(value, float):
                assert value == pytest.approx(other, abs=1e-5), key


def test_images_and_maps_of_different_samples_are_refused():
    pixels, maps, labels, recipients = _planted_class()
    with pytest.raises(ValueError, match=r"fewer images \(59\) than relevance maps \(60\)"):
        score_clusters(_CornerReader(), 0, array_batches(pixels[:-1]), maps, labels, recipients, IMAGE,
                       FlaggingConfig(min_cluster_size=5))


def test_samples_carrying_the_flagged_pattern_join_the_flagged_cluster():
    pixels, maps, labels, recipients = _planted_class()
    labels[:3] = 1  # three carriers that spectral clustering put elsewhere
    scored = score_clusters(_CornerReader(), 0, array_batches(pixels), maps, labels, recipients, IMAGE,
                            FlaggingConfig(min_cluster_size=5))
    joined = form_findings(labels, scored)
    joined, clusters = joined.labels, joined.clusters
    assert (joined[:20] == 0).all() and (joined[20:] != 0).all()
    flagged = {s.id: s for s in clusters}[0]
    assert flagged.evidence.joined_by_pattern == 3 and flagged.evidence.spectral_size == 17
    assert flagged.size == 20 and [s.size for s in clusters if s.id != 0] == [(joined == c).sum() for c in (1, 2)]
    assert scored[0].evidence.joined_by_pattern is None and (labels[:3] == 1).all()  # the inputs are kept


def audit(folder: Path, classes: list[int] | None, **demo) -> tuple[dict[str, bool], set[str], list]:
    """Build and audit a planted case; return (planted per id, flagged ids of the target class, other flags)."""
    raw = case_config(folder, demo, classes, attribution={"batch_size": 256, "shard_size": 1024})
    demo_config, config = load_demo(raw, base_dir=folder)
    prepare_demo(demo_config)  # the case is built before the audit, as `python -m spray run` does
    outcome = run_audit(config, progress=False)
    manifest = pd.read_csv(folder / "case" / "images" / "manifest.csv")
    planted = set(manifest.loc[manifest.artifact == 1, "path"])
    target = demo.get("target_class")
    flagged = {m for r in outcome.classes if r.class_index == target for c in r.clusters if c.flagged for m in c.members}
    elsewhere = [(r.class_index, c.id) for r in outcome.classes if r.class_index != target for c in r.clusters if c.flagged]
    return planted, flagged, elsewhere


PLANTED = [
    dict(artifact="tag", position="top-left", target_class=7, fraction=0.15, batchnorm=False, seed=11),
    # A frame the model hardly needs: masking it costs the framed 0s 0.25 median logits more than the rest
    # (necessity threshold 0.3, set so that natural sub-groups of photos, measured up to 0.22, stay unflagged:
    # docs/shortcut-kinds.md) and pasting it turns 3 % of other digits into 0s. Strict: a fix shows up.
    pytest.param(dict(artifact="frame", position="top-left", target_class=0, fraction=0.35, batchnorm=True,
                      seed=12), marks=pytest.mark.xfail(strict=True, reason="necessity 0.25 < 0.3")),
    dict(artifact="stripe", position="bottom-left", target_class=5, fraction=0.2, batchnorm=False, seed=13),
    dict(artifact="watermark", position="top-right", target_class=8, fraction=0.3, batchnorm=True, seed=14),
]


@pytest.mark.e2e
@pytest.mark.parametrize("demo", PLANTED, ids=lambda d: f"{d['artifact']}-{d['position']}-class{d['target_class']}")
def test_flags_match_the_planted_samples(tmp_path, demo):
    planted, flagged, elsewhere = audit(tmp_path, [demo["target_class"], (demo["target_class"] + 1) % 10], **demo)
    true_positive = len(planted & flagged)
    assert flagged, "nothing flagged"
    assert true_positive / len(flagged) >= 0.9, "precision"
    assert true_positive / len(planted) >= 0.9, "recall"
    assert elsewhere == []


@pytest.mark.e2e
def test_a_model_trained_without_an_artifact_gets_no_flag(tmp_path):
    planted, flagged, elsewhere = audit(tmp_path, None, artifact="none", fraction=0.0, batchnorm=True, seed=21)
    assert planted == set() and flagged == set() and elsewhere == []


def test_a_cluster_whose_every_member_carries_a_flagged_pattern_is_joined_and_named(tiny_audit, monkeypatch):
    """Pattern carriers may empty a whole spectral cluster: the report lists the flagged cluster with them and
    says where the emptied cluster went, instead of failing on a cluster without members."""
    import dataclasses
    import json

    import spray.flag
    from spray.cli import EXIT_OK, main
    from spray.report.schema import validate_summary

    measured = spray.flag.score_clusters

    def everyone_carries_the_first_pattern(*args, **kwargs):
        scored = measured(*args, **kwargs)
        n = len(scored[0].distance_to_members) if scored[0].distance_to_members is not None else sum(
            s.size for s in scored)
        first = dataclasses.replace(
            scored[0], evidence=dataclasses.replace(scored[0].evidence, flagged=True),
            region=np.ones(args[3].shape[1:], bool), distance_to_members=np.zeros(n), distance_to_rest=np.ones(n))
        return [first] + [dataclasses.replace(s, evidence=dataclasses.replace(s.evidence, flagged=False))
                          for s in scored[1:]]

    monkeypatch.setattr(spray.flag, "score_clusters", everyone_carries_the_first_pattern)
    path = tiny_audit()
    assert main(["run", str(path), "--quiet", "--no-cache", "--classes", "1"]) == EXIT_OK
    summary = json.loads((path.parent / "report" / "summary.json").read_text())
    validate_summary(summary)  # a real run's output against the published schema
    (result,) = summary["classes"]
    assert len(result["clusters"]) == 1 and result["clusters"][0]["size"] == result["n_samples"]
    assert any("was joined to it" in note for note in result["notes"])
