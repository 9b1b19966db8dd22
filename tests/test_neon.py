"""NEON: the neuralized k-means logit and its relevance (spray.neon)."""

import math

import numpy as np
import pytest

from spray.neon import competitor_evidence, default_beta, explain_membership

# Three centroids in the plane; the sample (0.5, 0.5) belongs to cluster 0. By hand:
# h_1 = ||x - mu_1||^2 - ||x - mu_0||^2 = 2.5 - 0.5 = 2, h_2 = 12.5 - 0.5 = 12.
# Midpoint rule: for k = 1, w = 2 (mu_0 - mu_1) = (-4, 0), m = (1, 0), (x - m) * w = (2, 0), which sums to h_1;
# for k = 2, w = (0, -8), m = (0, 2), (x - m) * w = (0, 12). So feature 0 carries R_1 and feature 1 carries R_2.
CENTROIDS = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
POINT = np.array([[0.5, 0.5]])


def test_hand_computed_example():
    result = explain_membership(POINT, CENTROIDS, np.array([0]), beta=1.0)
    softmin = -math.log(math.exp(-2) + math.exp(-12))
    p1 = 1 / (1 + math.exp(-10))
    assert result.logit[0] == pytest.approx(softmin, abs=1e-12)
    assert result.competitor_relevance[0] == pytest.approx([0.0, p1 * softmin, (1 - p1) * softmin], abs=1e-12)
    assert result.relevance[0] == pytest.approx([p1 * softmin, (1 - p1) * softmin], abs=1e-12)
    assert result.competitor[0] == 1
    np.testing.assert_allclose(competitor_evidence(POINT, CENTROIDS, np.array([0])), [[np.inf, 2.0, 12.0]])


def test_what_a_sample_has_and_what_it_lacks_split_its_relevance_by_hand():
    # (0.5, 0.5) is in cluster 0 (at the origin) only for lacking what clusters 1 and 2 have: both of its terms
    # have x_i below the boundary point (0.5 < 1 for k = 1, 0.5 < 2 for k = 2), so nothing of it is "present"
    lacking = explain_membership(POINT, CENTROIDS, np.array([0]), beta=1.0)
    assert lacking.present[0] == pytest.approx([0.0, 0.0], abs=1e-12)
    # (1.5, 0.5) in cluster 1 at (2, 0): against k = 0, w = (4, 0), m = (1, 0), term (2, 0), present;
    # against k = 2, w = (4, -8), m = (1, 2), terms (2, 12): the first present, the second lacks cluster 2's y
    having = explain_membership(np.array([[1.5, 0.5]]), CENTROIDS, np.array([1]), beta=1.0)
    logit = -math.log(math.exp(-2) + math.exp(-14))
    r0, r2 = logit / (1 + math.exp(-12)), logit / (1 + math.exp(12))
    assert having.relevance[0] == pytest.approx([r0 + 2 * r2 / 14, 12 * r2 / 14], abs=1e-12)
    assert having.present[0] == pytest.approx([r0 + 2 * r2 / 14, 0.0], abs=1e-12)


def test_stiff_soft_min_tends_to_the_hard_min():
    result = explain_membership(POINT, CENTROIDS, np.array([0]), beta=1e3)
    assert result.logit[0] == pytest.approx(2.0, abs=1e-9)
    assert result.relevance[0] == pytest.approx([2.0, 0.0], abs=1e-9)


def test_relevance_is_conserved_for_every_sample_also_when_the_cluster_is_not_the_nearest():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(6, 40))
    points = centroids[rng.integers(6, size=300)] + rng.normal(scale=0.7, size=(300, 40))
    nearest = ((points[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assigned = nearest.copy()
    assigned[:50] = (nearest[:50] + 1) % 6  # spectral clusters need not follow the nearest centroid
    result = explain_membership(points, centroids, assigned, batch_size=64)
    np.testing.assert_allclose(result.relevance.sum(1), result.logit, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(result.competitor_relevance.sum(1), result.logit, rtol=1e-5, atol=1e-8)
    assert (result.logit[50:] > -np.log(5) / result.beta - 1e-9).all()  # nearest: at most the soft min's shift
    assert (result.logit[:50] < 0).all()  # assigned to a farther centroid: evidence against membership


def test_batches_do_not_change_the_result():
    rng = np.random.default_rng(1)
    points, centroids = rng.normal(size=(37, 8)), rng.normal(size=(3, 8))
    assigned = rng.integers(3, size=37)
    whole = explain_membership(points, centroids, assigned, beta=0.5)
    batched = explain_membership(points, centroids, assigned, beta=0.5, batch_size=5)
    np.testing.assert_allclose(batched.relevance, whole.relevance, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batched.present, whole.present, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(batched.competitor, whole.competitor)


def test_relevance_lands_on_the_features_that_set_the_cluster_apart():
    """Heatmap-like points: cluster 1 differs from cluster 0 only by a bright corner (features 0-3)."""
    rng = np.random.default_rng(2)
    points = rng.normal(scale=0.1, size=(200, 64)) + 1.0
    points[100:, :4] += 3.0
    assigned = np.repeat([0, 1], 100)
    centroids = np.stack([points[assigned == c].mean(0) for c in (0, 1)])
    relevance = explain_membership(points, centroids, assigned).relevance
    positive = np.clip(relevance[100:], 0, None)
    assert positive[:, :4].sum() / positive.sum() > 0.9


def test_default_beta_follows_the_scale_of_the_features():
    points = np.array([[0.5, 0.5], [1.5, 0.0]])
    assigned = np.array([0, 1])
    beta = default_beta(competitor_evidence(points, CENTROIDS, assigned))
    assert beta == pytest.approx(default_beta(competitor_evidence(points * 10, CENTROIDS * 10, assigned)) * 100)


@pytest.mark.parametrize(("points", "centroids", "assigned", "message"), [
    (np.zeros((2, 3)), np.zeros((2, 4)), np.array([0, 1]), r"centroids must be \(K, D\) with D = 3"),
    (np.zeros((2, 3)), np.zeros((1, 3)), np.array([0, 0]), "at least 2 centroids"),
    (np.zeros((2, 3)), np.zeros((2, 3)), np.array([0, 2]), r"cluster 2, but there are 2 centroids \(indices 0..1\)"),
    (np.zeros((2, 3)), np.zeros((2, 3)), np.array([0.0, 1.0]), "integers"),
    (np.full((2, 3), np.nan), np.zeros((2, 3)), np.array([0, 1]), "finite"),
])
def test_bad_input_is_named(points, centroids, assigned, message):
    with pytest.raises(ValueError, match=message):
        explain_membership(points, centroids, assigned)


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta must be a positive number"):
        explain_membership(POINT, CENTROIDS, np.array([0]), beta=0.0)


def test_each_cluster_is_explained_against_its_nearest_competitor():
    """Three clusters of 8x8 maps: a plain one, one with a bright corner, one with a bright centre."""
    from spray.neon import explain_clusters

    rng = np.random.default_rng(3)
    maps = rng.normal(scale=0.05, size=(90, 8, 8)) + 0.2
    maps[30:60, :2, :2] += 2.0
    maps[60:, 3:5, 3:5] += 2.0
    labels = np.repeat([4, 7, 9], 30)
    explained = {c.cluster: c for c in explain_clusters(maps, labels)}
    corner = explained[7]
    assert corner.size == 30 and corner.competitor == 4 and corner.mean_logit > 0
    # most of the evidence is the cluster's own bright corner; the rest is the absence of cluster 9's centre
    positive = np.clip(corner.mean_map, 0, None)
    outside = np.ones((8, 8), bool)
    outside[:2, :2] = False
    assert positive[:2, :2].min() > positive[outside].max()
    assert positive[:2, :2].sum() / positive.sum() > 0.75
    centre = np.clip(explained[9].mean_map, 0, None)
    assert centre[3:5, 3:5].sum() / centre.sum() > 0.75
    # what the members have is the corner alone; what they lack (cluster 9's centre) is the rest
    has = np.clip(corner.present_map, 0, None)
    assert has[:2, :2].sum() / has.sum() > 0.99
    assert corner.present_share == pytest.approx(has.sum() / (has.sum() + np.clip(corner.mean_map - corner.present_map,
                                                                                   0, None).sum()))
    assert 0.5 < corner.present_share < 1.0


def test_a_class_with_one_cluster_has_no_competitor():
    from spray.neon import explain_clusters

    (only,) = explain_clusters(np.ones((5, 4, 4)), np.zeros(5, int))
    assert only.competitor == -1 and only.mean_logit == 0.0 and not only.mean_map.any()


def _corner_class(remnant: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 maps of one class, each with its own bright stroke somewhere (a digit): 40 plain (cluster 0), 30 with
    a bright corner too (cluster 1), and ``remnant`` maps (cluster 2), one with the corner: what joining a
    pattern's carriers can leave of a spectral cluster. A mean of many maps smooths the strokes out, the
    remnant's mean keeps its few."""
    rng = np.random.default_rng(5)
    count = 70 + remnant
    maps = rng.normal(scale=0.05, size=(count, 8, 8)) + 0.2
    for index, (row, col) in enumerate(zip(rng.integers(2, 7, count), rng.integers(2, 6, count))):
        maps[index, row, col : col + 3] += 1.5
    maps[40:71, :2, :2] += 2.0
    return maps, np.repeat([0, 1, 2], [40, 30, remnant])


def test_a_cluster_too_small_to_score_is_no_competitor():
    from spray.neon import explain_clusters

    maps, labels = _corner_class(remnant=2)
    corner = np.zeros((8, 8), bool)
    corner[:2, :2] = True

    def share(cluster) -> float:
        positive = np.clip(cluster.mean_map, 0, None)
        return float(positive[corner].sum() / positive.sum())

    every = {c.cluster: c for c in explain_clusters(maps, labels)}
    # the two remnant maps are every corner member's nearest "cluster": against them, their strokes set the
    # members apart as much as the corner does
    assert every[1].competitor == 2 and share(every[1]) < 0.75
    sized = {c.cluster: c for c in explain_clusters(maps, labels, min_competitor_size=5)}
    assert sized[1].competitor == 0 and share(sized[1]) > 0.9
    # the small cluster's own members are still explained, against the clusters that compete
    assert sized[2].competitor in (0, 1) and sized[2].mean_map.sum() == pytest.approx(sized[2].mean_logit)


def test_a_cluster_whose_rivals_are_all_too_small_has_no_competitor():
    from spray.neon import cluster_memberships

    maps, labels = _corner_class(remnant=2)
    keep = labels != 0
    clusters, per_sample, present = cluster_memberships(maps[keep], labels[keep], min_competitor_size=5)
    by_id = {c.cluster: c for c in clusters}
    assert by_id[1].competitor == -1 and by_id[1].mean_logit == 0.0 and not per_sample[labels[keep] == 1].any()
    assert not present[labels[keep] == 1].any()
    assert by_id[2].competitor == 1 and by_id[2].mean_logit != 0.0


@pytest.mark.parametrize(("competitors", "message"), [
    (np.array([True, False]), r"competitors must be \(3,\) bool"),
    (np.array([1, 1, 0]), r"competitors must be \(3,\) bool"),
    (np.array([True, False, False]), "cluster 0 has no competitor"),
])
def test_bad_competitors_are_named(competitors, message):
    with pytest.raises(ValueError, match=message):
        explain_membership(POINT, CENTROIDS, np.array([0]), competitors=competitors)


def test_min_competitor_size_must_be_positive():
    from spray.neon import cluster_memberships

    with pytest.raises(ValueError, match="min_competitor_size must be a positive integer"):
        cluster_memberships(np.ones((4, 2, 2)), np.array([0, 0, 1, 1]), min_competitor_size=0)
