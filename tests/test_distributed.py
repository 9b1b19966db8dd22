"""The same graph on a Dask cluster of two worker processes gives the local scheduler's results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spray.config import load_config
from spray.pipeline import run_audit

distributed = pytest.importorskip("distributed")


@pytest.mark.e2e
def test_a_local_cluster_of_two_processes_matches_the_local_scheduler(tiny_audit, tiny_case):
    local = run_audit(load_config(tiny_audit(output="local", cache={"directory": "cache-local"})), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = load_config(tiny_audit(output="cluster", cache={"directory": "cache-cluster"},
                                        dask={"address": cluster.scheduler_address}))
        remote = run_audit(config, progress=False)
        assert set(remote.stages["attribute"].values()) == {6, 0}  # computed on the workers
    ours, theirs = (json.loads((o.report.parent / "summary.json").read_text()) for o in (local, remote))
    for a, b in zip(ours["classes"], theirs["classes"]):
        np.testing.assert_allclose(a["eigenvalues"], b["eigenvalues"], atol=1e-6)
        assert a["n_clusters"] == b["n_clusters"]
        assert [c["members"] for c in a["clusters"]] == [c["members"] for c in b["clusters"]]
        np.testing.assert_allclose([c["score"] for c in a["clusters"]], [c["score"] for c in b["clusters"]], atol=1e-5)
