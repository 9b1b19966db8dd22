"""NEON: why is this sample in its cluster? A k-means assignment rewritten as a network and explained by LRP.

Neuralization (Kauffmann et al. 2019, "From clustering to cluster explanations via neural networks"):
with centroids ``mu_k`` and a sample ``x`` assigned to cluster ``c``, the evidence for ``c`` against each
competitor ``k != c`` is a linear layer

    h_k(x) = ||x - mu_k||^2 - ||x - mu_c||^2 = w_k . x + b_k,   w_k = 2 (mu_c - mu_k),
                                                                b_k = ||mu_k||^2 - ||mu_c||^2,

followed by a soft min-pooling over the competitors, the cluster logit

    f_c(x) = min^beta_k h_k = -1/beta log sum_{k != c} exp(-beta h_k)

(squared-distance units; ``beta * f_c`` is the seed's log-odds of membership, and as ``beta`` grows the soft
min tends to the hard ``min_k h_k``). ``f_c > 0`` means ``x`` is nearer ``mu_c`` than every competitor by
that margin; a sample whose spectral cluster is not the nearest centroid gets a negative logit.

Relevance flows back in two steps: through the soft min each competitor receives ``R_k = p_k f_c`` with
``p = softmin(beta h)`` (so ``sum_k R_k = f_c``), and through the linear layer by the midpoint rule, with
root point ``m_k = (mu_c + mu_k) / 2`` on the decision boundary between ``c`` and ``k``:

    R_i = sum_k (x_i - m_ik) w_ik / h_k * R_k.

Since ``sum_i (x_i - m_ik) w_ik = h_k`` exactly, relevance is conserved: ``sum_i R_i = f_c`` for every sample
(except a sample exactly on a boundary, ``h_k = 0``, whose ``R_k`` has no direction and is dropped).

Each term says one of two things. Where ``x_i > m_ik`` the sample *has* more of feature ``i`` than the boundary
point (with ``w_ik > 0``: a trait its cluster has and the competitor lacks, such as a watermark's relevance);
where ``x_i < m_ik`` it *lacks* it (with ``w_ik < 0``: relevance the competitor puts there and the members do
not). Over heatmaps normalised per sample both kinds are positive evidence for the same fact, relevance drawn
to an artifact is missing elsewhere, so the report shows the first kind, ``present``, as what the members
have, and names the share of the second. ``present + absent = relevance`` per sample.
The sum over ``k`` is done with two ``(N, K) @ (K, D)`` products (no ``(N, K, D)`` tensor), because
``(x_i - m_ik) w_ik = 2 x_i (mu_ci - mu_ki) - (mu_ci^2 - mu_ki^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Membership:
    """NEON explanation of ``N`` samples' cluster assignments over ``D`` features.

    - ``logit (N,)``: the soft-min cluster logit ``f_c(x)`` (squared-distance units of the features).
    - ``relevance (N, D)``: each feature's share of the logit; ``relevance.sum(1) == logit``.
    - ``competitor (N,)``: the competitor cluster with the smallest evidence ``h_k`` (the nearest competing
      centroid), the cluster each sample is most nearly confused with.
    - ``competitor_relevance (N, K)``: ``R_k``, the logit split over competitors (0 for the own cluster).
    - ``beta``: the soft min's stiffness used (per squared-distance unit).
    - ``present (N, D)``: the part of ``relevance`` from the terms where the sample's feature exceeds the
      boundary point (``x_i > m_ik``): what the sample has; ``relevance - present`` is what it lacks.
    """

    logit: np.ndarray
    relevance: np.ndarray
    competitor: np.ndarray
    competitor_relevance: np.ndarray
    beta: float
    present: np.ndarray


def default_beta(evidence: np.ndarray) -> float:
    """``1 / mean |min_k h_k|``: the soft min is then neither a hard min nor an average over competitors,
    whatever the scale of the features. ``evidence (N, K)`` with ``inf`` for each sample's own cluster."""
    margins = np.abs(evidence.min(1))
    margins = margins[np.isfinite(margins)]
    scale = float(margins.mean()) if len(margins) else 0.0
    return 1.0 / scale if scale > 0 else 1.0


def competitor_evidence(points: np.ndarray, centroids: np.ndarray, assigned: np.ndarray,
                        competitors: np.ndarray | None = None) -> np.ndarray:
    """``h (N, K)``: ``||x - mu_k||^2 - ||x - mu_c||^2`` for each sample and centroid, ``inf`` at ``k = c``
    and at every centroid that is not a competitor (``competitors (K,)`` bool; default: all are)."""
    points, centroids, assigned = _checked(points, centroids, assigned)
    rivals = _competitors(competitors, len(centroids), assigned)
    x, mu = torch.from_numpy(points), torch.from_numpy(centroids)
    evidence = _evidence(x, mu, torch.from_numpy(assigned), rivals)
    return evidence.numpy()


def explain_membership(points: np.ndarray, centroids: np.ndarray, assigned: np.ndarray, *,
                       beta: float | None = None, batch_size: int = 4096,
                       competitors: np.ndarray | None = None) -> Membership:
    """NEON relevance of each sample's membership in its assigned cluster.

    ``points (N, D)``: the samples in the space the clusters were formed in (e.g. flattened heatmaps);
    ``centroids (K, D)``: the clusters' centres in that space, ``K >= 2``; ``assigned (N,)``: each sample's
    cluster, an index into ``centroids``. ``beta`` > 0: the soft min's stiffness per squared-distance unit
    (default :func:`default_beta`). ``competitors (K,)`` bool: the centroids a sample is weighed against
    (default: all); every sample needs one besides its own. Computed in float64 in batches of ``batch_size``
    samples.
    """
    points, centroids, assigned = _checked(points, centroids, assigned)
    if beta is not None and not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    rivals = _competitors(competitors, len(centroids), assigned)
    mu = torch.from_numpy(centroids)
    if beta is None:
        beta = default_beta(competitor_evidence(points, centroids, assigned, rivals.numpy()))
    parts = [_explain_batch(torch.from_numpy(points[start : start + batch_size]), mu,
                            torch.from_numpy(assigned[start : start + batch_size]), beta, rivals)
             for start in range(0, len(points), batch_size)]
    logit, relevance, competitor, shares, present = (torch.cat(column).numpy() for column in zip(*parts))
    return Membership(logit=logit, relevance=relevance, competitor=competitor, competitor_relevance=shares,
                      beta=float(beta), present=present)


def _explain_batch(x: torch.Tensor, mu: torch.Tensor, assigned: torch.Tensor, beta: float,
                   rivals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    evidence = _evidence(x, mu, assigned, rivals)  # (B, K), inf at the own cluster and at non-competitors
    # soft min over competitors: -1/beta log sum exp(-beta h); an inf (own cluster, non-competitor) adds exp(-inf) = 0
    logit = -torch.logsumexp(-beta * evidence, dim=1) / beta
    shares = torch.softmax(-beta * evidence, dim=1) * logit[:, None]  # R_k, summing to the logit
    # midpoint rule: R_i = sum_k (x_i - m_ik) w_ik R_k / h_k, with the own cluster's term zero
    finite = torch.isfinite(evidence)
    # a sample exactly on the boundary with k (h_k = 0) has no direction to spread R_k along: that share,
    # and only it, is dropped (the one case where the sum falls short of the logit)
    usable = finite & (evidence != 0)
    denominator = torch.where(usable, evidence, torch.ones_like(evidence))
    a = torch.where(usable, shares / denominator, torch.zeros_like(shares))  # (B, K)
    own = mu[assigned]  # (B, D)
    total = a.sum(1, keepdim=True)
    relevance = 2 * x * (total * own - a @ mu) - (total * own**2 - a @ mu**2)
    competitor = torch.where(finite, evidence, torch.full_like(evidence, torch.inf)).argmin(1)
    return logit, relevance, competitor, shares, _present(x, mu, own, a)


def _present(x: torch.Tensor, mu: torch.Tensor, own: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(B, D) the midpoint-rule terms where x_i > m_ik, summed over the competitors ``k`` (a loop over the
    clusters, not the samples: a (B, K, D) tensor would not fit for large B)."""
    present = torch.zeros_like(x)
    for k in torch.nonzero(a.ne(0).any(0)).flatten().tolist():
        above = (x - (own + mu[k]) / 2).clamp(min=0)  # x - m_k where positive
        present += a[:, k : k + 1] * above * 2 * (own - mu[k])
    return present


def _evidence(x: torch.Tensor, mu: torch.Tensor, assigned: torch.Tensor, rivals: torch.Tensor) -> torch.Tensor:
    # the linear layer itself, 2 x.(mu_c - mu_k) + ||mu_k||^2 - ||mu_c||^2: no ||x||^2 is formed, so none
    # cancels, and the midpoint rule's contributions sum to exactly these values
    products = x @ mu.T  # (B, K)
    norms = (mu**2).sum(1)  # (K,)
    evidence = 2 * (products.gather(1, assigned[:, None]) - products) + norms[None] - norms[assigned][:, None]
    evidence = evidence.masked_fill(~rivals[None], torch.inf)
    return evidence.scatter(1, assigned[:, None], torch.inf)


def _competitors(competitors: np.ndarray | None, count: int, assigned: np.ndarray) -> torch.Tensor:
    """(K,) bool tensor of the centroids samples are weighed against; each assigned cluster needs one other."""
    if competitors is None:
        return torch.ones(count, dtype=torch.bool)
    rivals = np.asarray(competitors)
    if rivals.shape != (count,) or rivals.dtype != bool:
        raise ValueError(f"competitors must be ({count},) bool (one per centroid), got shape {rivals.shape} "
                         f"of {rivals.dtype}")
    alone = [int(c) for c in np.unique(assigned) if not np.delete(rivals, c).any()]
    if alone:
        raise ValueError(f"cluster {alone[0]} has no competitor: competitors must hold a centroid other than its own")
    return torch.from_numpy(rivals.copy())


def _checked(points: np.ndarray, centroids: np.ndarray,
             assigned: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    assigned = np.asarray(assigned)
    if points.ndim != 2:
        raise ValueError(f"points must be (N, D), got shape {points.shape}")
    if centroids.ndim != 2 or centroids.shape[1] != points.shape[1]:
        raise ValueError(f"centroids must be (K, D) with D = {points.shape[1]} (the points' width), "
                         f"got shape {centroids.shape}")
    if len(centroids) < 2:
        raise ValueError(f"need at least 2 centroids to compare a cluster against, got {len(centroids)}")
    if assigned.shape != (len(points),) or not np.issubdtype(assigned.dtype, np.integer):
        raise ValueError(f"assigned must be ({len(points)},) integers, got shape {assigned.shape} "
                         f"of {assigned.dtype}")
    outside = assigned[(assigned < 0) | (assigned >= len(centroids))]
    if len(outside):
        raise ValueError(f"assigned holds cluster {int(outside[0])}, but there are {len(centroids)} centroids "
                         f"(indices 0..{len(centroids) - 1})")
    if not (np.isfinite(points).all() and np.isfinite(centroids).all()):
        raise ValueError("points and centroids must be finite (no NaN or inf)")
    return np.ascontiguousarray(points), np.ascontiguousarray(centroids), assigned.astype(np.int64)


@dataclass(frozen=True)
class ClusterMembership:
    """What sets one cluster of heatmaps apart, by NEON over the heatmap grid.

    - ``cluster``: the cluster's label; ``size``: its members.
    - ``competitor``: the cluster its members are most often nearest to after their own (by the mean map).
    - ``mean_logit``: the members' mean cluster logit (squared-distance units of the maps).
    - ``mean_map (h, w)``: the members' mean membership relevance: positive where the members' heatmaps
      differ from the competitors' means in the direction of their own cluster's mean.
    - ``present_map (h, w)``: the part of ``mean_map`` from what the members have (``Membership.present``);
      ``mean_map - present_map`` is from what they lack. None where the terms were not split (the
      deep-feature lens carries them through the network together).
    """

    cluster: int
    size: int
    competitor: int
    mean_logit: float
    mean_map: np.ndarray
    present_map: np.ndarray | None = None

    @property
    def present_share(self) -> float | None:
        """Share of the positive relevance of the members' mean map that comes from what they have: the
        positive part of ``present_map`` over that of ``present_map`` and of ``mean_map - present_map``
        together (NaN when neither has any; None without ``present_map``)."""
        if self.present_map is None:
            return None
        has = float(np.clip(self.present_map, 0, None).sum())
        lacks = float(np.clip(self.mean_map - self.present_map, 0, None).sum())
        return has / (has + lacks) if has + lacks > 0 else float("nan")


def explain_clusters(maps: np.ndarray, labels: np.ndarray, *, beta: float | None = None,
                     min_competitor_size: int = 1) -> list[ClusterMembership]:
    """NEON explanation of every cluster of a class's heatmaps (see :func:`cluster_memberships`)."""
    return cluster_memberships(maps, labels, beta=beta, min_competitor_size=min_competitor_size)[0]


def cluster_memberships(maps: np.ndarray, labels: np.ndarray, *, beta: float | None = None,
                        min_competitor_size: int = 1) -> tuple[list[ClusterMembership], np.ndarray, np.ndarray]:
    """NEON explanation of every cluster of a class's heatmaps, and of every sample's membership.

    ``maps (N, h, w)``: the preprocessed heatmaps the clusters were formed from; ``labels (N,)``: each map's
    cluster. The centroids are the clusters' mean maps: spray's spectral clustering runs k-means in the
    eigenvector space, which has no pixels; the mean maps are the centroids k-means would have over the
    heatmaps themselves, so membership relevance lands on heatmap pixels.

    A cluster of fewer than ``min_competitor_size`` maps is no competitor (its members are still explained
    against the others): its mean is a sample or two, not a group, and one that sits between a flagged
    cluster and the rest of the class (a few members left over when a pattern's carriers were joined) would
    otherwise be the nearest competitor of every member and hide the pattern they share. The audit passes
    ``flagging.min_cluster_size``, the size below which a cluster is not scored either. A cluster with no
    competitor left (a class of one cluster) gets competitor ``-1``, a zero logit and zero maps.

    Returns the clusters (by label), ``(N, h, w)`` each sample's membership relevance in its own cluster, and
    ``(N, h, w)`` the part of it from what the sample has (``Membership.present``).
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {maps.shape}")
    labels = np.asarray(labels)
    if labels.shape != (len(maps),):
        raise ValueError(f"labels must be ({len(maps)},), got shape {labels.shape}")
    if not isinstance(min_competitor_size, int) or min_competitor_size < 1:
        raise ValueError(f"min_competitor_size must be a positive integer, got {min_competitor_size!r}")
    clusters, assigned = np.unique(labels, return_inverse=True)
    sizes = np.bincount(assigned, minlength=len(clusters))
    rivals = sizes >= min_competitor_size
    # clusters with a competitor other than themselves; the others keep zero maps
    explained = np.array([np.delete(rivals, k).any() for k in range(len(clusters))], bool)
    relevance = np.zeros((len(maps), maps[0].size if len(maps) else 0))
    present = np.zeros_like(relevance)
    logit, competitor = np.zeros(len(maps)), np.full(len(maps), -1)
    rows = explained[assigned]
    if rows.any():
        points = maps.reshape(len(maps), -1)
        centroids = np.stack([points[assigned == k].mean(0) for k in range(len(clusters))])
        membership = explain_membership(points[rows], centroids, assigned[rows], beta=beta, competitors=rivals)
        relevance[rows], logit[rows], competitor[rows] = membership.relevance, membership.logit, membership.competitor
        present[rows] = membership.present
    out = []
    for k, cluster in enumerate(clusters):
        members = assigned == k
        if not explained[k]:
            out.append(ClusterMembership(int(cluster), int(sizes[k]), -1, 0.0, np.zeros(maps.shape[1:]),
                                         np.zeros(maps.shape[1:])))
            continue
        nearest = int(np.bincount(competitor[members], minlength=len(clusters)).argmax())
        out.append(ClusterMembership(
            cluster=int(cluster), size=int(sizes[k]), competitor=int(clusters[nearest]),
            mean_logit=float(logit[members].mean()), mean_map=relevance[members].mean(0).reshape(maps.shape[1:]),
            present_map=present[members].mean(0).reshape(maps.shape[1:])))
    return out, relevance.reshape(maps.shape), present.reshape(maps.shape)


def positive_share_in_region(relevance: np.ndarray, region: np.ndarray | None) -> float | None:
    """Share of the positive part of ``relevance (h, w)`` that lies inside ``region (h, w)`` bool; None
    without a region (or an empty one), NaN when there is no positive relevance at all."""
    if region is None or not np.any(region):
        return None
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0, None)
    total = float(positive.sum())
    return float(positive[np.asarray(region, dtype=bool)].sum() / total) if total > 0 else float("nan")
