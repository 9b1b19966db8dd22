"""How spray's spectral analysis scales, against scikit-learn and CoRelAy, on heatmap-shaped data.

    python benchmarks/spectral_scale.py [--sizes 1000 20000 100000] [--large] [--json PATH]
        [--corelay-python PATH] [--reference-max 20000] [--no-umap] [--embeddings embed tsne umap umap-all]
        [--knn-paths hnsw nndescent]
        [--clusters 10] [--noise 0.15 1.0] [--seed 0]

Data: synthetic pooled heatmaps, N x 1024 (32 x 32) float32: ``--clusters`` groups, each a few Gaussian
blobs of relevance (some negative) whose positions and amplitudes jitter per sample, plus spatially smooth
noise, each map divided by its sum of absolute values (spray's default preprocessing). Every tool gets the
same maps (same seed).

Tools, each (tool, N) in a fresh process so that peak memory and imports are its own:

- ``spray``: ``spray.analysis`` step by step as ``spectral_analysis`` runs it -- distinct (the distinct
  maps, which the graph is built on), knn (kNN graph and affinity; by N and ``KnnLimits``: exact up to 10,000, projected on principal components up to 200,000
  with its recall measured first, approximate above; the table shows which, e.g. ``knn pca48``), eigen
  (normalised Laplacian, 32 smallest eigenpairs), cluster (eigengap, k-means on the row-normalised
  eigenvectors), and the embedding steps ``--embeddings`` names (default umap), not part of ``seconds``:
  ``embed`` is ``spray.analysis.embed`` with t-SNE and UMAP in one call, as the embed stage runs them
  (above 10,000 maps: ``--landmarks`` maps laid out, the rest placed); ``tsne`` and ``umap`` one method per
  call; ``umap-all`` UMAP laying out every map (the baseline of the landmarks). The ratio line divides
  ``embed`` (else the sum of ``tsne`` and ``umap``) by ``seconds``. Everything a
  fresh process pays on first use counts: importing numba or faiss and loading compiled kernels is in knn.
  ``--knn-paths`` adds one spray run per N and path with that kNN search forced: ``projected``,
  ``nndescent`` (pynndescent), ``exact``, or ``hnsw``: faiss-cpu's ``IndexHNSWFlat`` (32 links, built with
  every core), its search breadth ``efSearch`` doubled from 2 (k + 1) until the recall@k on the same 1,000
  sampled rows reaches the projected search's gate (0.95), the rest of the analysis as spray runs it. faiss
  is not a spray dependency: ``pip install faiss-cpu`` to run that path. Shown as ``spray[hnsw]`` etc.; in
  the JSON ``"tool": "spray"`` with ``"knn_method"``.
- ``sklearn``: what ``SpectralClustering(affinity="nearest_neighbors", n_neighbors=10,
  eigen_solver="arpack", n_clusters=<planted>)`` runs, called step by step through the same public
  functions (``kneighbors_graph``, ``spectral_embedding``, ``k_means``) so each step has a time.
- ``corelay``: CoRelAy's ``SpectralEmbedding`` pipeline processors, in its order and with its defaults
  (``SciPyPDist`` -> ``SparseKNN(10)`` -> ``SymmetricNormalLaplacian`` -> ``EigenDecomposition(32)``),
  then its ``KMeans(n_clusters=<planted>)`` on the eigenvectors. CoRelAy is GPL and pins its own
  dependencies, so it runs from a separate environment: ``--corelay-python`` (default: the
  ``CORELAY_PYTHON`` environment variable) is a Python that can ``import corelay``; without one, the
  CoRelAy runs are skipped and the output says so.

sklearn and corelay run only up to ``--reference-max`` samples (20,000: beyond it they take many minutes,
and CoRelAy's dense N x N matrices need tens of GB).

``--noise`` takes several values; each N runs for each: at 0.15 the planted groups share no kNN edges
(one component per group), at 1.0 they do (one connected component).

Reported per run: ``seconds`` = distinct + knn + eigen + cluster (the spectral analysis; embeddings separate), each step's
wall time, ``peak_memory_mb`` = the process's peak resident memory (VmHWM, including the input maps,
``input_mb``), ``step_peak_mb`` = the highest resident memory sampled during each step, the number of
clusters found, the ARI against the planted groups, for spray the kNN recall and ``layout_ari``: per
embedding step and method, the ARI of k-means (the planted number of groups) on the 2-D coordinates.
``--json PATH`` writes ``{"runs": [{"tool", "n", "seconds", "peak_memory_mb", "steps": {...}, ...}]}``.

2 cores are shared with other work on the machines this was written on: compare tools within one run
(runs of one N are back to back), not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _memory import peak_rss_mb, rss_mb  # benchmarks/_memory.py (scripts run from benchmarks/)

REPOSITORY = Path(__file__).resolve().parents[1]
EIGENVALUES = 32
NEIGHBORS = 10


# ----------------------------------------------------------------------------------------------- data


def synthetic_heatmaps(
    n: int, n_clusters: int = 10, size: int = 32, seed: int = 0, noise: float = 0.15, chunk: int = 20_000
):
    """``(maps (n, size * size) float32, labels (n,))``: clustered, heatmap-shaped, L1-normalised.

    ``noise`` scales the smooth noise added to every map: at 0.15 the groups share no kNN edges (the
    graph has about one component per group), at 1.0 they do (one component: measured at N = 3,000).
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    blobs = []  # per cluster: rows of (x, y, width, amplitude)
    for _ in range(n_clusters):
        m = int(rng.integers(2, 5))
        amplitude = rng.choice([1.0, 1.0, 1.0, -0.5], m) * rng.uniform(0.5, 1.5, m)
        blobs.append(
            np.column_stack(
                [rng.uniform(4, size - 4, m), rng.uniform(4, size - 4, m), rng.uniform(1.5, 5, m), amplitude]
            ).astype(np.float32)
        )
    weights = rng.uniform(0.5, 2.0, n_clusters)
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    maps = np.empty((n, size * size), np.float32)
    for start in range(0, n, chunk):
        part = labels[start : start + chunk]
        block = np.zeros((len(part), size, size), np.float32)
        for c in np.unique(part):
            members = np.flatnonzero(part == c)
            for x, y, width, amplitude in blobs[c]:
                jx = (x + rng.normal(0, 1.0, len(members))).astype(np.float32)[:, None, None]
                jy = (y + rng.normal(0, 1.0, len(members))).astype(np.float32)[:, None, None]
                scale = (amplitude * rng.lognormal(0, 0.25, len(members))).astype(np.float32)[:, None, None]
                block[members] += scale * np.exp(-((xx - jx) ** 2 + (yy - jy) ** 2) / (2 * width * width))
        block += noise * gaussian_filter(rng.normal(size=block.shape).astype(np.float32), sigma=(0, 1.0, 1.0))
        flat = block.reshape(len(part), -1)
        flat /= np.abs(flat).sum(axis=1, keepdims=True)
        maps[start : start + len(part)] = flat
    return maps, labels


# ----------------------------------------------------------------------------------------------- memory


class Steps:
    """Times each step and samples resident memory every 5 ms while it runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        peak = [rss_mb()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        try:
            result = function()
        finally:
            self.seconds[name] = time.perf_counter() - start
            done.set()
            sampler.join()
            self.peak_mb[name] = max(peak[0], rss_mb())
        return result


# ----------------------------------------------------------------------------------------------- tools


def _sampled_truth(maps: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(len(rows),) squared distance from each sampled row to its true k-th nearest other row (float64)."""
    kth = np.empty(len(rows))
    for start in range(0, len(rows), 100):
        part = rows[start : start + 100]
        d2 = (np.einsum("ij,ij->i", maps[part], maps[part]).astype(np.float64)[:, None]
              - 2.0 * (maps[part] @ maps.T).astype(np.float64) + np.einsum("ij,ij->i", maps, maps)[None, :])
        d2[np.arange(len(part)), part] = np.inf
        kth[start : start + 100] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return kth


def faiss_hnsw(maps: np.ndarray, k: int, seed: int, min_recall: float = 0.95, links: int = 32):
    """``(indices (N, k), distances (N, k), description, recall)``: faiss's HNSW graph under spray's recall
    gate (search breadth doubled until the recall@k of 1,000 seeded rows reaches ``min_recall``, at most
    16 (k + 1)); each sample dropped from its own list by index."""
    import faiss

    index = faiss.IndexHNSWFlat(maps.shape[1], links)
    index.add(maps)
    rows = np.sort(np.random.default_rng(seed).choice(len(maps), min(1000, len(maps)), replace=False))
    kth = _sampled_truth(maps, rows, k)
    breadth = 2 * (k + 1)
    while True:
        index.hnsw.efSearch = breadth
        found_sq, found = index.search(maps[rows], k + 1)
        found_sq = np.where(found == rows[:, None], np.inf, found_sq)
        near = np.sort(found_sq, axis=1)[:, :k]
        recall = float((near <= kth[:, None] * (1 + 1e-4) + 1e-12).mean())
        if recall >= min_recall or breadth >= 16 * (k + 1):
            break
        breadth *= 2
    found_sq, found = index.search(maps, k + 1)
    found_sq = np.where((found == np.arange(len(maps))[:, None]) | (found < 0), np.inf, found_sq)
    order = np.argsort(found_sq, axis=1, kind="stable")[:, :k]
    indices = np.take_along_axis(found, order, axis=1).astype(np.int64)
    distances = np.sqrt(np.maximum(np.take_along_axis(found_sq, order, axis=1), 0.0)).astype(np.float64)
    description = f"approximate (faiss HNSW, {links} links, efSearch {breadth}); recall@{k} {recall:.3f} on {len(rows)}"
    return indices, distances, description, recall


def run_spray(
    maps: np.ndarray, clusters: int, seed: int, embeddings: list[str], knn_method: str = "auto", landmarks: int = 0
) -> dict[str, Any]:
    import scipy.sparse.csgraph

    sys.path.insert(0, str(REPOSITORY))
    from spray import analysis
    from spray.analysis import _maps as analysis_maps
    from spray.config import AnalysisConfig, EmbeddingConfig

    config = AnalysisConfig(neighbors=NEIGHBORS, eigenvalues=EIGENVALUES, seed=seed)
    steps = Steps()
    extra: dict[str, Any] = {}

    # spectral_analysis builds the graph on the distinct maps (repeats share their cluster)
    distinct, inverse = steps.run("distinct", lambda: analysis_maps.distinct_rows(maps))

    def knn():
        if knn_method == "hnsw":
            indices, distances, description, recall = faiss_hnsw(distinct, config.neighbors, config.seed)
        else:
            method = "approximate" if knn_method == "nndescent" else knn_method
            indices, distances, description, recall = analysis.nearest_neighbors(distinct, config.neighbors, method, config.seed)
        # knn_method: what was asked for ("auto", or a path forced); knn: what was done
        extra.update(knn=description, knn_recall=recall, knn_method=knn_method)
        return analysis.affinity_from_neighbors(indices, distances)

    affinity = steps.run("knn", knn)

    def eigen():
        laplacian = analysis.normalized_laplacian(affinity)
        return analysis.smallest_eigenpairs(laplacian, min(config.eigenvalues, len(distinct) - 1), config.seed)

    values, vectors = steps.run("eigen", eigen)

    def cluster():
        lower, upper = analysis.cluster_range(len(distinct), len(values), config)
        k = analysis.choose_n_clusters(values, lower, upper)
        return analysis.spectral_clustering(vectors, k, config.seed)

    labels = steps.run("cluster", cluster)[inverse]
    extra["n_components"] = int(scipy.sparse.csgraph.connected_components(affinity, directed=False)[0])
    for method in embeddings:
        # "embed": both methods in one call, as the embed stage runs them (landmarks above FULL_LAYOUT_MAX_N);
        # "tsne", "umap": one method per call; "umap-all": UMAP of every map, the baseline of the landmarks
        full_max_n = len(maps) if method == "umap-all" else analysis.FULL_LAYOUT_MAX_N
        names = ["tsne", "umap"] if method == "embed" else [method.removesuffix("-all")]
        embedding = EmbeddingConfig.model_validate({"methods": names, "seed": seed})
        layouts = steps.run(method, lambda: analysis.embed(maps, embedding, full_max_n=full_max_n,
                                                           landmarks=landmarks or analysis.LANDMARKS))
        extra.setdefault("layouts", {}).update({f"{method}/{name}": xy for name, xy in layouts.items()})
    extra["eigenvalues"] = values[:12].round(6).tolist()
    return {"steps": steps, "labels": labels, **extra}


def run_sklearn(maps: np.ndarray, clusters: int, seed: int, embeddings: list[str], landmarks: int = 0) -> dict[str, Any]:
    from sklearn.cluster import k_means
    from sklearn.manifold import spectral_embedding
    from sklearn.neighbors import kneighbors_graph
    from sklearn.utils import check_random_state

    # exactly SpectralClustering(affinity="nearest_neighbors", n_neighbors=10, eigen_solver="arpack").fit
    random_state = check_random_state(seed)
    steps = Steps()

    def knn():
        connectivity = kneighbors_graph(maps, n_neighbors=NEIGHBORS, include_self=True)
        return 0.5 * (connectivity + connectivity.T)

    affinity = steps.run("knn", knn)
    embedding = steps.run(
        "eigen",
        lambda: spectral_embedding(
            affinity, n_components=clusters, eigen_solver="arpack", random_state=random_state,
            eigen_tol="auto", drop_first=False,
        ),
    )
    labels = steps.run("cluster", lambda: k_means(embedding, clusters, random_state=random_state, n_init=10)[1])
    return {"steps": steps, "labels": labels}


def run_corelay(maps: np.ndarray, clusters: int, seed: int, embeddings: list[str], landmarks: int = 0) -> dict[str, Any]:
    import corelay
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    # the processors of corelay.pipeline.spectral.SpectralEmbedding, with its defaults, in its order
    steps = Steps()
    affinity = steps.run(
        "knn", lambda: SparseKNN(n_neighbors=NEIGHBORS, symmetric=True)(SciPyPDist(metric="euclidean")(maps))
    )
    values, vectors = steps.run(
        "eigen", lambda: EigenDecomposition(n_eigval=EIGENVALUES)(SymmetricNormalLaplacian()(affinity))
    )
    labels = steps.run("cluster", lambda: KMeans(n_clusters=clusters, kwargs={"random_state": seed})(vectors))
    order = np.argsort(values)
    return {
        "steps": steps,
        "labels": np.asarray(labels),
        "corelay_version": getattr(corelay, "__version__", "?"),
        "eigenvalues": np.sort(values)[:12].round(6).tolist() if order.size else [],
    }


KNN_PATHS = ("projected", "hnsw", "nndescent", "exact")
EMBEDDINGS = ("embed", "tsne", "umap", "umap-all")
TOOLS: dict[str, Callable[..., dict[str, Any]]] = {"spray": run_spray, "sklearn": run_sklearn, "corelay": run_corelay}
for _path in KNN_PATHS:
    TOOLS[f"spray[{_path}]"] = lambda maps, clusters, seed, embeddings, landmarks=0, _path=_path: run_spray(
        maps, clusters, seed, embeddings, _path, landmarks)


def worker(
    tool: str, n: int, clusters: int, seed: int, embeddings: list[str], noise: float, landmarks: int = 0
) -> dict[str, Any]:
    """One (tool, N) run in this process; returns the JSON record."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    maps, truth = synthetic_heatmaps(n, clusters, seed=seed, noise=noise)
    input_mb = maps.nbytes / 2**20
    outcome = TOOLS[tool](maps, clusters, seed, embeddings, landmarks=landmarks)
    steps: Steps = outcome.pop("steps")
    labels = outcome.pop("labels")
    # how well each 2-D layout keeps the planted groups apart: k-means with the planted number of groups
    layouts = outcome.pop("layouts", {})
    outcome["layout_ari"] = {
        name: round(float(adjusted_rand_score(truth, KMeans(clusters, n_init=3, random_state=seed).fit_predict(xy))), 3)
        for name, xy in layouts.items()
    }
    analysis = [name for name in ("distinct", "knn", "eigen", "cluster") if name in steps.seconds]
    return {
        "tool": "spray" if tool.startswith("spray") else tool,
        "knn_method": tool[len("spray["):-1] if tool.startswith("spray[") else "auto",
        "n": n,
        "noise": noise,
        "seconds": round(sum(steps.seconds[name] for name in analysis), 3),
        "peak_memory_mb": round(peak_rss_mb(), 1),
        "input_mb": round(input_mb, 1),
        "steps": {name: round(value, 3) for name, value in steps.seconds.items()},
        "step_peak_mb": {name: round(value, 1) for name, value in steps.peak_mb.items()},
        "n_clusters": len(np.unique(labels)),
        "ari": round(float(adjusted_rand_score(truth, labels)), 4),
        **outcome,
    }


# ----------------------------------------------------------------------------------------------- driver


def _child(python: str, tool: str, n: int, noise: float, args: argparse.Namespace) -> dict[str, Any]:
    command = [python, str(Path(__file__).resolve()), "--worker", tool, str(n),
               "--clusters", str(args.clusters), "--seed", str(args.seed), "--noise", str(noise)]
    command += ["--embeddings", *_embeddings(args)] if _embeddings(args) else ["--no-umap"]
    command += ["--landmarks", str(args.landmarks)]
    environment = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")  # no busy-waiting threads on shared cores
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        return {"tool": tool, "n": n, "noise": noise, "wall_s": round(time.perf_counter() - started, 1),
                "error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _corelay_python(requested: str | None) -> str | None:
    candidate = requested or os.environ.get("CORELAY_PYTHON")
    if not candidate:
        return None
    check = subprocess.run([candidate, "-c", "import corelay"], capture_output=True)
    return candidate if check.returncode == 0 else None


def _knn_tag(description: str) -> str:
    """"exact", "pca48" (projected on 48 principal components), "hnsw" or "nndescent", from spray's
    description (a fallback's description starts with what ran)."""
    if description.startswith("exact"):
        return "exact"
    what = description.split(":")[0]
    found = re.search(r"in (\d+) principal components", what)
    if found:
        return f"pca{found.group(1)}"
    return "hnsw" if "faiss" in what else "nndescent"


def _name(record: dict[str, Any]) -> str:
    method = record.get("knn_method", "auto")
    return record["tool"] + ("" if method == "auto" else f"[{method}]")


def _print_run(record: dict[str, Any]) -> None:
    name = _name(record)
    if "error" in record:
        print(f"{name:>16} {record['n']:>8} {record['noise']:>5}  failed: {record['error']}", flush=True)
        return
    steps = record["steps"]
    cells = "  ".join(f"{step} {steps[step]:7.2f}s" for step in ("distinct", "knn", "eigen", "cluster", *EMBEDDINGS) if step in steps)
    extra = f"  knn {_knn_tag(record['knn'])} recall {record['knn_recall']:.3f}" if "knn_recall" in record else ""
    extra += f"  components {record['n_components']}" if "n_components" in record else ""
    if record.get("layout_ari"):
        extra += "  layout ARI " + " ".join(f"{name} {ari:.3f}" for name, ari in record["layout_ari"].items())
    print(
        f"{name:>16} {record['n']:>8} {record['noise']:>5}  total {record['seconds']:8.2f}s  "
        f"peak {record['peak_memory_mb']:8.0f} MB  (input {record['input_mb']:.0f} MB)  {cells}  "
        f"k={record['n_clusters']} ARI {record['ari']:.3f}{extra}",
        flush=True,
    )


def _plan(n: int, args: argparse.Namespace, corelay_python: str | None) -> list[tuple[str, str]]:
    """(tool, python) for the runs of one N."""
    plan = [("spray", sys.executable)]
    plan += [(f"spray[{path}]", sys.executable) for path in args.knn_paths if path != "exact" or n <= args.reference_max]
    if n <= args.reference_max:
        plan.append(("sklearn", sys.executable))
        if corelay_python:
            plan.append(("corelay", corelay_python))
    return plan


def _embeddings(args: argparse.Namespace) -> list[str]:
    return [] if args.no_umap else list(args.embeddings)


def _print_ratios(runs: list[dict[str, Any]], n: int, noise: float) -> None:
    """Each other tool's and path's time over spray's default path, for one N and noise."""
    done = {_name(r): r for r in runs if r["n"] == n and r.get("noise") == noise and "error" not in r}
    if "spray" not in done:
        return
    spray = done["spray"]
    steps = spray["steps"]
    embedding = ["embed"] if "embed" in steps else [step for step in ("tsne", "umap") if step in steps]
    if embedding:
        spent = sum(steps[step] for step in embedding)
        print(f"{'':>16} {n:>8} {noise:>5}  spray embedding ({' + '.join(embedding)}) {spent:.2f}s / spectral "
              f"{spray['seconds']:.2f}s: {spent / spray['seconds']:.2f}"
              + (f"; umap-all / umap: {steps['umap-all'] / steps['umap']:.2f}"
                 if {"umap", "umap-all"} <= set(steps) else ""), flush=True)
    for name, record in done.items():
        if name != "spray":
            print(f"{'':>16} {n:>8} {noise:>5}  {name} / spray time: {record['seconds'] / done['spray']['seconds']:.2f} "
                  "(the spectral analysis)", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 20_000, 100_000])
    parser.add_argument("--large", action="store_true", help="also N = 1,000,000 (spray only; ~4 GB of maps)")
    parser.add_argument("--json", type=Path, help="write the runs to this file")
    parser.add_argument("--corelay-python", help="a Python that can import corelay (default: $CORELAY_PYTHON)")
    parser.add_argument("--reference-max", type=int, default=20_000, help="largest N for sklearn, corelay and exact kNN")
    parser.add_argument("--no-umap", action="store_true", help="no embedding step (same as --embeddings with none)")
    parser.add_argument("--embeddings", nargs="*", choices=EMBEDDINGS, default=["umap"],
                        help="spray's embedding steps, each timed on its own (umap-all: UMAP of every map)")
    parser.add_argument("--knn-paths", nargs="*", default=[], choices=KNN_PATHS,
                        help="also run spray with each of these kNN searches forced (tool spray, knn_method PATH)")
    parser.add_argument("--landmarks", type=int, default=0,
                        help="landmarks laid out above 10,000 maps (default: spray's LANDMARKS)")
    parser.add_argument("--clusters", type=int, default=10, help="planted groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.15],
                        help="smooth noise per map, one run per value (1.0: groups share edges)")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "N"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        tool, n = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(tool, n, args.clusters, args.seed, _embeddings(args), args.noise[0], args.landmarks)))
        return 0

    sizes = sorted(set(args.sizes + ([1_000_000] if args.large else [])))
    print(f"synthetic heatmaps: {args.clusters} groups, N x 1024, noise {args.noise}, seed {args.seed}")
    corelay_python = _corelay_python(args.corelay_python)
    if corelay_python is None:
        print("corelay: skipped (give --corelay-python or CORELAY_PYTHON, a Python that can import corelay)")
    print(f"{'tool':>16} {'N':>8} {'noise':>5}")
    runs = []
    for n in sizes:
        for noise in args.noise:
            for tool, python in _plan(n, args, corelay_python):
                record = _child(python, tool, n, noise, args)
                _print_run(record)
                runs.append(record)
            _print_ratios(runs, n, noise)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
