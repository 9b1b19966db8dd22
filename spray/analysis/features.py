"""The deep-feature lens (``analysis.space: features``): clusters of one layer's activations, explained at the input.

SpRAY clusters heatmaps: *how* the model decides. The lens clusters *what* the network computes at one layer
(``analysis.layer``, e.g. the penultimate), as k-means on a deep network's features in Kauffmann et al.'s NEON
paper, and explains each cluster back to the input. Two cached tasks per class:

- ``features`` (:func:`class_features`): the layer's activations ``(N, D)`` of the class's explained samples,
  in the preprocess entry's order, from the LRP engine's own forward pass (so that the activations are the
  ones its rules see, BatchNorm folded alike). The analyse task clusters them instead of the heatmaps.
- ``lens`` (:func:`lens_memberships`): for the final clusters (after flagging joined pattern carriers), each
  sample's NEON membership relevance at the layer (centroids: the clusters' mean activations, ``beta`` from
  the class's evidence as in ``spray.neon``) becomes the output relevance of spray's LRP engine at that layer,
  propagated to the input with the configured composite (``LRP.at_layer``). The input maps are summed over
  channels and block-summed to ``preprocessing.size``, the grid of the heatmap lens's membership maps, so
  the report shows them in the same place, and a map's sum is the relevance that reached the input.

Flagging, prototypes and the 2-D embeddings still work on the heatmaps: the lens changes which samples form
a cluster and how its membership is explained, not how Clever Hans evidence is measured.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spray.attribute import attribution_settings, prepare_attributor, resolve_device, to_device
from spray.cache import Entry, cached, entry_key
from spray.config import ImageConfig, LrpAttribution, ModelConfig, PreprocessingConfig
from spray.data import Sample, iter_pixel_batches, to_model_input
from spray.errors import ModelError, RunError
from spray.neon import ClusterMembership, competitor_evidence, default_beta, explain_membership
from spray.preprocess import downsize

STORE_VERSION = 2
"""Revision of what features and lens entries store; bump it when that changes within a release."""

Stored = tuple[dict[str, np.ndarray], dict[str, Any]]


def leaf_layers(model: nn.Module) -> list[str]:
    """Names of the model's modules that have no children, in ``named_modules`` order."""
    return [name for name, module in model.named_modules() if name and not any(True for _ in module.children())]


def check_layer(model: nn.Module, name: str) -> None:
    """ModelError unless ``name`` is a leaf module of ``model`` (``analysis.layer``): naming a container's
    layers when it is one, else the nearest names and the model's last layers."""
    modules = dict(model.named_modules())
    leaves = leaf_layers(model)
    if name in leaves:
        return
    if name and name in modules:
        inside = [leaf for leaf in leaves if leaf.startswith(f"{name}.")]
        raise ModelError(f"analysis.layer {name!r} is a container ({type(modules[name]).__name__}), not a layer; "
                         f"name one of its layers: {', '.join(inside[:10])}")
    close = difflib.get_close_matches(name, leaves, n=5, cutoff=0.4)
    near = f"near names: {', '.join(repr(c) for c in close)}; " if close else ""
    raise ModelError(f"analysis.layer {name!r} is not a layer of the model; {near}its last layers are "
                     f"{', '.join(repr(leaf) for leaf in leaves[-6:])}")


@dataclass(frozen=True)
class FeatureJob:
    """What the lens tasks of one class need besides their entries: the model, the LRP section, the image
    section, the layer, and the class's samples (looked up by the preprocess entry's ids)."""

    model: ModelConfig
    model_token: str
    attribution: LrpAttribution
    image: ImageConfig
    layer: str
    samples: tuple[Sample, ...]


def features_key(job: FeatureJob, pre_key: str) -> str:
    """The features entry's key: model, LRP settings, image section, layer and the preprocess key (its ids)."""
    return entry_key("features", STORE_VERSION, job.model_token, attribution_settings(job.attribution), job.image,
                     job.layer, pre_key)


def lens_key(features: str, flag: str, preprocessing: PreprocessingConfig, min_competitor_size: int = 1) -> str:
    """The lens entry's key: the features and flag keys (final clusters) and the maps' grid."""
    return entry_key("lens", STORE_VERSION, features, flag, preprocessing, min_competitor_size)


def features_task(directory: str, key: str, pre: Entry, job: FeatureJob) -> Entry:
    """The class's features entry, computed (:func:`class_features`) unless stored; a Dask task body."""
    return cached(directory, "features", key, class_features, pre, job)


def lens_task(directory: str, key: str, pre: Entry, features: Entry, flagged: Entry, job: FeatureJob,
              preprocessing: PreprocessingConfig, min_competitor_size: int = 1) -> Entry:
    """The class's lens entry, computed (:func:`lens_memberships`) unless stored; a Dask task body."""
    return cached(directory, "lens", key, lens_memberships, pre, features, flagged, job, preprocessing,
                  min_competitor_size)


def read_features(entry: Entry) -> np.ndarray:
    """``(N, D)`` float32 activations of a features entry, in the preprocess entry's order."""
    return entry.read()[0]["features"]


def _ordered(pre: Entry, job: FeatureJob) -> list[Sample]:
    ids = pre.read()[1]["ids"]
    by_id = {sample.id: sample for sample in job.samples}
    return [by_id[str(sample_id)] for sample_id in ids]


def _batches(samples: Sequence[Sample], job: FeatureJob) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """(model input on the device, positions) per batch; RunError when an image explained before no longer
    decodes."""
    device = resolve_device(job.attribution.device)
    for batch in iter_pixel_batches(samples, job.image, job.attribution.batch_size, job.attribution.loader_workers):
        if batch.failed:
            sample_id, reason = batch.failed[0]
            raise RunError(f"sample {sample_id} can no longer be read ({reason}); the images changed while "
                           "auditing: re-run")
        yield to_device(to_model_input(batch.pixels, job.image), device), np.asarray(batch.ok)


def class_features(pre: Entry, job: FeatureJob) -> Stored:
    """``features (N, D)`` float32: the layer's activations, flattened, of the preprocess entry's samples."""
    samples = _ordered(pre, job)
    engine = prepare_attributor(job.model, job.attribution, job.image, job.model_token)
    parts, shape = [], []
    for x, _ in _batches(samples, job):
        output, _ = engine.at_layer(x, job.layer)
        parts.append(output.reshape(len(x), -1).float().cpu().numpy())
        shape = list(output.shape[1:])
    features = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return {"features": features.astype(np.float32)}, {"layer": job.layer, "shape": shape}


def lens_memberships(pre: Entry, features: Entry, flagged: Entry, job: FeatureJob,
                     preprocessing: PreprocessingConfig, min_competitor_size: int = 1) -> Stored:
    """Per sample (preprocess order) its NEON membership in its final cluster, explained at the input.

    Arrays: ``maps (N, h, w)`` float32 input relevance summed over channels and block-summed to
    ``preprocessing.size``; ``logit (N,)`` the membership logit at the layer (squared-distance units of the
    activations); ``competitor (N,)`` the nearest other cluster's label (-1 when it has none). A cluster of
    fewer than ``min_competitor_size`` samples is no competitor (``spray.neon.cluster_memberships``: a few
    leftovers would otherwise be every member's nearest rival and hide what the members share).
    """
    from spray.flag import read_flagged

    labels = read_flagged(flagged).labels
    points = read_features(features).astype(np.float64)
    clusters, assigned = np.unique(labels, return_inverse=True)
    n, (h, w) = len(labels), preprocessing.size
    if len(clusters) < 2:
        return {"maps": np.zeros((n, h, w), np.float32), "logit": np.zeros(n), "competitor": np.full(n, -1)}, {}
    centroids = np.stack([points[assigned == k].mean(0) for k in range(len(clusters))])
    rivals = np.bincount(assigned, minlength=len(clusters)) >= min_competitor_size
    explained = np.array([np.delete(rivals, k).any() for k in range(len(clusters))], bool)[assigned]
    if not explained.any():
        return {"maps": np.zeros((n, h, w), np.float32), "logit": np.zeros(n), "competitor": np.full(n, -1)}, {}
    beta = default_beta(competitor_evidence(points[explained], centroids, assigned[explained], competitors=rivals))
    engine = prepare_attributor(job.model, job.attribution, job.image, job.model_token)
    maps, logits, competitors = [], [], []
    for x, rows in _batches(_ordered(pre, job), job):
        found: list[Any] = []

        def seed(output: torch.Tensor, rows: np.ndarray = rows, found: list[Any] = found) -> torch.Tensor:
            flat = output.reshape(len(output), -1).double().cpu().numpy()
            relevance, logit, competitor = np.zeros_like(flat), np.zeros(len(flat)), np.full(len(flat), -1)
            inside = explained[rows]
            if inside.any():
                membership = explain_membership(flat[inside], centroids, assigned[rows][inside], beta=beta,
                                                competitors=rivals)
                relevance[inside], logit[inside] = membership.relevance, membership.logit
                competitor[inside] = clusters[membership.competitor]
            found.append((logit, competitor))
            return torch.from_numpy(relevance).reshape(output.shape).to(output.device)

        _, relevance = engine.at_layer(x, job.layer, seed)
        if relevance is None:  # at_layer returns relevance whenever it is given a seed
            raise RuntimeError(f"LRP from layer {job.layer!r} returned no relevance")
        summed = relevance.sum(1).float().cpu().numpy()
        maps.append(downsize(summed, (h, w)) * (summed.shape[1] * summed.shape[2] / (h * w)))
        logits.append(found[0][0])
        competitors.append(found[0][1])
    return ({"maps": np.concatenate(maps).astype(np.float32), "logit": np.concatenate(logits),
             "competitor": np.concatenate(competitors).astype(np.int64)}, {"beta": beta, "layer": job.layer})


def lens_neon(entry: Entry, labels: np.ndarray) -> tuple[dict[int, ClusterMembership], np.ndarray]:
    """A lens entry as the report's NEON of each final cluster (``labels (N,)``, the flag entry's): per
    cluster id its competitor (the one most members are nearest to at the layer), the members' mean logit and
    mean input membership map; and every sample's own map ``(N, h, w)``. A single cluster gets none."""
    arrays, _ = entry.read()
    maps, logit, competitor = arrays["maps"], arrays["logit"], arrays["competitor"]
    clusters = np.unique(labels)
    if len(clusters) < 2:
        return {}, maps
    out = {}
    for cluster in clusters:
        members = labels == cluster
        rivals, counts = np.unique(competitor[members], return_counts=True)
        out[int(cluster)] = ClusterMembership(
            cluster=int(cluster), size=int(members.sum()), competitor=int(rivals[counts.argmax()]),
            mean_logit=float(logit[members].mean()), mean_map=maps[members].mean(0))
    return out, maps


def lens_note(layer: str, width: int) -> str:
    """The class note that says the lens: shown in the report and written to summary.json's ``notes``."""
    return (f"lens: clusters of the activations of layer {layer!r} ({width} features; analysis.space: features), "
            "not of the heatmaps; each cluster's NEON map is its membership at that layer, propagated to the "
            "input by LRP and shown on the heatmap grid")
