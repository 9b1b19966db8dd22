"""Degenerate classes are survived: each gives a class-level result with a reason, the rest of the audit
goes on, and nothing that is not a number ever counts as evidence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from audit_cases import make_tiny_case, tiny_config, write_config
from fault_cases import run_cli, spray_process

from spray.analysis import embed, spectral_analysis
from spray.config import AnalysisConfig, EmbeddingConfig, FlaggingConfig, ImageConfig
from spray.flag import array_batches, score_clusters


@pytest.mark.e2e
def test_a_class_whose_heatmaps_are_all_zero_is_one_cluster_with_no_structure(tmp_path):
    """A model whose output for class 2 ignores the image gives all-zero relevance there (scikit-learn's
    t-SNE crashes the process on such input); it runs in a child process so that a crash shows as one."""
    case = make_tiny_case(tmp_path / "case")
    weights = torch.load(case / "model.pt")
    weights["4.weight"][2] = 0.0  # class 2's logit is its bias alone: a constant output
    weights["4.bias"][2] = 1.0
    torch.save(weights, case / "model.pt")
    write_config(case, tiny_config(case))
    process = spray_process("run", "audit.yaml", "--quiet", cwd=case)
    _out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    summary = json.loads((case / "report" / "summary.json").read_text())
    by_class = {c["class"]: c for c in summary["classes"]}
    assert sorted(by_class) == [0, 1, 2]
    assert len(by_class[2]["clusters"]) == 1
    assert any("no structure" in note for note in by_class[2]["notes"])
    assert not any(cluster["flagged"] for cluster in by_class[2]["clusters"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_heatmaps_always_share_a_cluster(seed):
    """Two groups of 60 identical heatmaps among 30 others, in a shuffled order: each group is one cluster
    (with ties among zero distances the kNN graph could split a group arbitrarily)."""
    rng = np.random.default_rng(seed)
    first, second = rng.normal(size=64), rng.normal(size=64) + 3
    maps = np.vstack([np.tile(first, (60, 1)), np.tile(second, (60, 1)), rng.normal(size=(30, 64))])
    order = rng.permutation(len(maps))
    config = AnalysisConfig(neighbors=5, eigenvalues=8, max_clusters=4)
    labels = spectral_analysis(maps[order].astype(np.float32), config).labels[np.argsort(order)]
    assert len(set(labels[:60])) == 1 and len(set(labels[60:120])) == 1


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_constant_heatmaps_are_one_cluster_and_embed_at_the_origin(value):
    maps = np.full((20, 64), value, dtype=np.float32)
    result = spectral_analysis(maps, AnalysisConfig(neighbors=5, eigenvalues=8, max_clusters=4))
    assert result.n_clusters == 1 and (result.labels == 0).all()
    assert "no structure" in result.notes[0]
    coordinates = embed(maps, EmbeddingConfig(methods=["tsne"]))["tsne"]
    assert coordinates.shape == (20, 2) and not coordinates.any()


@pytest.mark.parametrize("broken", [math.nan, math.inf, -math.inf])
def test_evidence_that_is_not_a_number_never_passes(broken):
    from spray.flag import weakest_evidence

    weakest, score = weakest_evidence({"consistency": 5.0, "necessity": broken, "sufficiency": 3.0})
    assert weakest == "necessity" and score == 0.0
    assert weakest_evidence({"consistency": 5.0, "necessity": 2.0, "sufficiency": 3.0}) == ("necessity", 2.0)


@pytest.mark.e2e
def test_a_class_pushed_below_the_knn_minimum_by_skipped_samples_is_skipped_and_the_rest_audited(tmp_path, capsys):
    case = make_tiny_case(tmp_path / "case")
    for image in sorted((case / "images" / "c2").glob("*.png"))[:20]:
        image.write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # listed, present, unreadable: skipped
    write_config(case, tiny_config(case))
    assert run_cli("run", str(case / "audit.yaml"), "--quiet") == 0
    summary = json.loads((case / "report" / "summary.json").read_text())
    assert sorted(c["class"] for c in summary["classes"]) == [0, 1]
    (skipped,) = summary["skipped_classes"]
    assert skipped["class"] == 2 and "analysis.neighbors" in skipped["reason"]
    assert "skipped class 2" in capsys.readouterr().out
    assert len(summary["skipped_samples"]) == 20  # its unreadable images are still listed, each with its reason


class _CornerReader(torch.nn.Module):
    """A classifier whose class-0 logit reads the top-left 4 x 4 corner."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, 0, :4, :4].mean((1, 2))
        return torch.stack([4 * corner, 1 - corner], 1)


def test_a_cluster_of_copies_of_a_few_images_is_not_scored():
    """15 copies each of two images share a pattern only because they are the same images: they are two
    samples of evidence, fewer than flagging.min_cluster_size, so the cluster is not scored (nor flagged)."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 0.3, size=(60, 16, 16, 1)).astype(np.float32)
    maps = rng.uniform(0, 0.1, size=(60, 16, 16)).astype(np.float32)
    pixels[:30, :4, :4] = 1.0
    maps[:30, :4, :4] += 1.0
    pixels[:15], pixels[15:30] = pixels[0], pixels[15]  # two images, 15 copies each
    maps[:15], maps[15:30] = maps[0], maps[15]
    labels = np.where(np.arange(60) < 30, 0, 1)
    recipients = rng.uniform(0, 0.3, size=(30, 16, 16, 1)).astype(np.float32)
    image = ImageConfig(mode="L", size=(16, 16), mean=[0.0], std=[1.0])
    scored = {s.id: s for s in score_clusters(_CornerReader(), 0, array_batches(pixels), maps, labels, recipients,
                                              image, FlaggingConfig(min_cluster_size=5))}
    assert not scored[0].flagged and "2 distinct heatmaps among its 30 members" in scored[0].evidence.not_scored
    assert scored[1].evidence.not_scored is None
