"""Load a spray export with ViRelAy's own classes and print what they read (run in ViRelAy's venv).

    python3 -m venv /work/virelay-venv
    /work/virelay-venv/bin/pip install --ignore-requires-python --only-binary=:all: virelay==1.0.0
    /work/virelay-venv/bin/python tests/virelay_check.py PROJECT.yaml

(ViRelAy 1.0.0 declares Python >= 3.11.13; its data loading runs on 3.11.7.) Exits 1 naming the first
mismatch; tests/test_export.py runs it when SPRAY_VIRELAY_PYTHON names that venv's python.
"""

from __future__ import annotations

import sys

import numpy as np
from virelay.model import Project


def check(path: str) -> list[str]:
    project = Project(path)
    lines = [f"project {project.name!r}, model {project.model!r}, dataset of {len(project.dataset)} samples, "
             f"attribution method {project.attribution_method!r}"]
    for index in range(len(project.dataset)):
        sample = project.get_sample(index)
        attribution = project.get_attribution(index)
        if sample.labels[0].index != attribution.labels[0].index:
            raise SystemExit(f"sample {index}: label {sample.labels[0].index} in the dataset, "
                             f"{attribution.labels[0].index} in the attributions")
        if sample.data.dtype != np.uint8 or sample.data.ndim != 3:
            raise SystemExit(f"sample {index}: ViRelAy read data {sample.data.dtype} {sample.data.shape}")
    for method in project.get_analysis_methods():
        clusterings = project.get_analysis_clustering_names(method)
        embeddings = project.get_analysis_embedding_names(method)
        for category in project.get_analysis_categories(method):
            for clustering in clusterings:
                for embedding in embeddings:
                    analysis = project.get_analysis(method, category.name, clustering, embedding)
                    if len(analysis.clustering) != len(analysis.attribution_indices):
                        raise SystemExit(f"class {category.name}: {len(analysis.clustering)} cluster labels for "
                                         f"{len(analysis.attribution_indices)} attributions")
            analysis = project.get_analysis(method, category.name, clusterings[0], "spectral")
            lines.append(f"{method} / class {category.name} ({category.human_readable_name}): "
                         f"{len(analysis.attribution_indices)} attributions, {clusterings[0]} with "
                         f"{len(np.unique(analysis.clustering))} clusters, embeddings {', '.join(embeddings)}, "
                         f"{len(analysis.eigenvalues)} eigenvalues")
    project.close()
    return lines


if __name__ == "__main__":
    print("\n".join(check(sys.argv[1])))
