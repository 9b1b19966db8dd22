"""A synthetic audit result, for previewing the report's design and for tests: no model, no data needed.

``python -m spray.report.synthetic OUT_DIR [--classes 3] [--clusters 4] [--size 32]`` writes a report for
made-up classes in which one cluster of the first class carries a planted corner watermark (flagged) and
every other cluster is clean. The numbers are shaped like real ones but mean nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spray.flag.evidence import Evidence, Line, weakest_evidence
from spray.results import ClassResult, ClusterResult, RunInfo, SkippedClass

_PREPROCESSED = 32  # side of the preprocessed maps, as spray's default downsizing


def _blob_image(rng: np.random.Generator, size: int, colour: bool) -> np.ndarray:
    """A smooth random stroke pattern, vaguely like a handwritten digit or an object on a background."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size))
    for _ in range(3):
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        radius = rng.uniform(0.12, 0.25)
        ring = np.exp(-(((np.hypot(yy - cy, xx - cx) - radius) / 0.05) ** 2))
        image = np.maximum(image, ring)
    image = np.clip(image + rng.normal(0, 0.04, image.shape), 0, 1)
    if colour:
        tint = rng.uniform(0.4, 1.0, size=3)
        pixels = image[..., None] * tint + (1 - image[..., None]) * np.array([0.15, 0.2, 0.25])
    else:
        pixels = np.repeat(image[..., None], 3, axis=2)
    return (pixels * 255).astype(np.uint8)


def _heatmap(image: np.ndarray, rng: np.random.Generator, watermark: tuple[slice, slice] | None) -> np.ndarray:
    """Relevance on the strokes, with some negative evidence, concentrated on the watermark when present."""
    gray = image.mean(axis=2) / 255.0
    relevance = gray * rng.uniform(0.2, 1.0, gray.shape) - 0.15 * rng.random(gray.shape) * (gray > 0.3)
    if watermark is not None:
        relevance *= 0.25
        relevance[watermark] += 3.0
    return relevance.astype(np.float32)


def _downsize(values: np.ndarray, side: int) -> np.ndarray:
    factor = values.shape[0] // side
    if factor <= 1:
        return values.astype(np.float64)
    cropped = values[: side * factor, : side * factor]
    return cropped.reshape(side, factor, side, factor).mean(axis=(1, 3))


def synthetic_class(
    class_index: int,
    class_name: str,
    *,
    n_clusters: int = 4,
    per_cluster: int = 30,
    n_prototypes: int = 6,
    image_size: int = 32,
    colour: bool = False,
    flagged_cluster: int | None = 0,
    embeddings: tuple[str, ...] = ("tsne", "umap"),
    seed: int = 0,
) -> ClassResult:
    """One made-up audited class; ``flagged_cluster`` carries a watermark and is flagged (None: no flag)."""
    rng = np.random.default_rng(seed)
    side = image_size
    mark = (slice(side - side // 5, side - 1), slice(side - side // 5, side - 1))
    ids: list[str] = []
    maps: list[np.ndarray] = []
    clusters: list[ClusterResult] = []
    for cluster_id in range(n_clusters):
        watermark = mark if cluster_id == flagged_cluster else None
        cluster, member_maps = _synthetic_cluster(rng, class_name, cluster_id, per_cluster, n_prototypes, side,
                                                  colour, watermark, last=cluster_id == n_clusters - 1)
        clusters.append(cluster)
        ids += cluster.members
        maps += member_maps
    n = len(ids)
    labels = np.full(n, class_index)
    predictions = labels.copy()
    predictions[rng.random(n) < 0.04] = (class_index + 1) % 10
    cluster_array = np.repeat(np.arange(n_clusters), per_cluster)
    centres = rng.normal(0, 6, size=(n_clusters, 2))
    emb = {
        name: (centres[cluster_array] + rng.normal(0, 1.2, size=(n, 2))) * (1 + k)
        for k, name in enumerate(embeddings)
    }
    gaps = np.sort(rng.uniform(0.001, 0.02, n_clusters))
    eigenvalues = np.concatenate([[0.0], gaps[1:], 0.35 + np.cumsum(rng.uniform(0.01, 0.05, 16 - n_clusters))])
    clusters.sort(key=lambda c: (not c.flagged, -c.score))
    return ClassResult(
        class_index=class_index, class_name=class_name, ids=ids, labels=labels, predictions=predictions,
        logits=rng.normal(8, 2, n), conservation=rng.normal(0.995, 0.01, n), eigenvalues=np.sort(eigenvalues),
        n_clusters=n_clusters, cluster_labels=cluster_array, embeddings=emb, clusters=clusters,
        class_mean_map=np.mean(maps, axis=0).astype(np.float32), notes=[],
    )


def _synthetic_cluster(rng: np.random.Generator, class_name: str, cluster_id: int, per_cluster: int,
                       n_prototypes: int, side: int, colour: bool, watermark: tuple[slice, slice] | None,
                       last: bool) -> tuple[ClusterResult, list[np.ndarray]]:
    """One made-up cluster and its members' preprocessed maps; a watermarked one is flagged, the last clean
    one has no region (as if it had not been scored)."""
    members, member_maps, images, heatmaps = [], [], [], []
    for member in range(per_cluster):
        image = _blob_image(rng, side, colour)
        if watermark is not None:
            image[watermark] = 255
        heatmap = _heatmap(image, rng, watermark)
        members.append(f"{class_name}/{cluster_id:02d}_{member:03d}.png")
        images.append(image)
        heatmaps.append(heatmap)
        member_maps.append(_downsize(heatmap, _PREPROCESSED) / max(np.abs(heatmap).sum(), 1e-12))
    mean_map = np.mean(member_maps, axis=0)
    flagged = watermark is not None
    region = None if last and not flagged else mean_map > 0.5 * mean_map.max()
    cluster = ClusterResult(
        id=cluster_id, members=members, evidence=_synthetic_evidence(rng, flagged, region),
        mean_map=mean_map.astype(np.float32), region=region, prototypes=members[:n_prototypes],
        prototype_images=images[:n_prototypes], prototype_heatmaps=heatmaps[:n_prototypes],
    )
    return cluster, member_maps


def _synthetic_evidence(rng: np.random.Generator, flagged: bool, region: np.ndarray | None) -> Evidence:
    """Evidence shaped like spray.flag's: four lines, each with a threshold; the score is the weakest ratio
    measured / threshold, so a cluster is flagged exactly when the score reaches 1."""
    lines = (
        Line("consistency", float(rng.uniform(0.9, 0.98) if flagged else rng.uniform(0.2, 0.7)), 0.85),
        Line("necessity", float(rng.uniform(0.4, 0.8) if flagged else rng.uniform(-0.05, 0.15)), 0.2),
        Line("sufficiency", float(rng.uniform(0.4, 0.9) if flagged else rng.uniform(-0.05, 0.1)), 0.2),
        Line("decision", float(rng.uniform(3.0, 9.0) if flagged else rng.uniform(-1.0, 1.0)), 1.645),
    )
    weakest, score = weakest_evidence({line.name: line.ratio for line in lines})
    masking_rest = float(rng.uniform(0.0, 0.1))
    return Evidence(
        score=score, flagged=flagged, consistency=lines[0], necessity=lines[1], sufficiency=lines[2],
        decision=lines[3], weakest=weakest, region_area=float(region.mean()) if region is not None else None,
        relevance_in_region=float(rng.uniform(0.55, 0.8) if flagged else rng.uniform(0.1, 0.3)),
        masking_drop=lines[1].value + masking_rest, masking_drop_rest=masking_rest,
        transplant_flip_rate=float(rng.uniform(0.6, 0.9) if flagged else rng.uniform(0.0, 0.05)),
    )


def synthetic_run(skipped_samples: int = 2, skipped_classes: int = 1) -> RunInfo:
    """Run metadata shaped like a real run's."""
    return RunInfo(
        config_path="pipelines/demo.yaml",
        config={
            "model": {"factory": "demo-case/model.py:build_model", "kwargs": {}, "weights": "demo-case/model.pt"},
            "data": {"manifest": "demo-case/images/manifest.csv",
                     "image": {"mode": "L", "size": [32, 32], "mean": [0.0], "std": [1.0]}},
            "audit": {"classes": [3, 5, 8]},
            "attribution": {"composite": "epsilon_plus_flat", "batch_size": 64, "device": "auto"},
            "analysis": {"knn": 10, "eigenvalues": 32, "clusters": [2, 10]},
            "output": "out/demo",
        },
        model="demo-case/model.py:build_model, weights demo-case/model.pt",
        data="demo-case/images/manifest.csv, 1,797 samples",
        versions={"spray": "0.1.0", "torch": "2.5.1", "numpy": "2.4.6", "scikit-learn": "1.6.1"},
        started="2026-11-26T06:30:00+00:00",
        duration_s=74.2,
        device="cpu",
        skipped_samples=[(f"images/broken_{i}.png", "cannot identify image file") for i in range(skipped_samples)],
        skipped_classes=[
            SkippedClass(class_index=9, class_name="nine", reason="4 samples, fewer than the kNN needs (11)")
        ][:skipped_classes],
        stages={"attribute": {"computed": 6, "cached": 0}, "preprocess": {"computed": 3, "cached": 0},
                "analyse": {"computed": 3, "cached": 0}, "flag": {"computed": 3, "cached": 0}},
    )


def main(argv: list[str] | None = None) -> Path:
    """Write a synthetic report and print its path."""
    from spray.report import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--prototypes", type=int, default=6)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--colour", action="store_true")
    args = parser.parse_args(argv)
    names = ["three", "five", "eight", "zero", "one", "two", "four", "six", "seven", "nine"]
    classes = [
        synthetic_class(i, names[i % len(names)], n_clusters=args.clusters, n_prototypes=args.prototypes,
                        image_size=args.size, colour=args.colour, flagged_cluster=0 if i == 0 else None, seed=i)
        for i in range(args.classes)
    ]
    path = write_report(args.output, classes, synthetic_run())
    print(path)
    return path


if __name__ == "__main__":
    main()
