"""On a distributed cluster: attribution asks for a GPU where workers declare one, and a worker killed in the
middle of an attribution shard is survived (its task re-runs elsewhere, results and cache intact)."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from spray.cache import open_stored_array, read_entry
from spray.config import load_config
from spray.data import load_dataset
from spray.model import model_token
from spray.pipeline import build_graph, run_audit, workers_declare_gpu

distributed = pytest.importorskip("distributed")


class _FakeClient:
    def __init__(self, resources: list[dict]):
        self.resources = resources

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": {f"tcp://w{i}": {"resources": r} for i, r in enumerate(self.resources)}}


def test_attribution_asks_for_a_gpu_only_when_a_worker_declares_one(tiny_audit):
    assert workers_declare_gpu(_FakeClient([{}, {"GPU": 1}]))
    assert not workers_declare_gpu(_FakeClient([{}, {"MEMORY": 4e9}]))
    config = load_config(tiny_audit())
    dataset = load_dataset(config.data)
    for gpu, expected in ((True, {"resources": {"GPU": 1}}), (False, None)):
        graph = build_graph(config, dataset, [0], str(config.cache.directory), model_token(config.model), gpu_resource=gpu)
        for shard in graph[0]["shards"]:
            assert shard.__dask_graph__().layers[shard.key].annotations == expected
        for stage in ("preprocess", "analyse", "embed", "flag"):
            task = graph[0][stage]
            assert task.__dask_graph__().layers[task.key].annotations is None


def _slow_attribution_plugin():
    """A worker plugin (defined in a function so that it is pickled by value) making every attribution
    shard take at least a second on the workers, restarted ones included: time to kill one mid-shard."""

    class SlowAttribution(distributed.WorkerPlugin):
        def setup(self, worker):
            import spray.attribute

            compute = spray.attribute.attribute_shard

            def slow(*args, **kwargs):
                time.sleep(1.0)
                return compute(*args, **kwargs)

            spray.attribute.attribute_shard = slow

    return SlowAttribution()


def _staging_of(folder: Path, pids: dict[str, int]) -> tuple[str, int] | None:
    """(worker address, pid) of a worker that is writing an attribution entry now, if any."""
    for staging in folder.glob(".*.tmp") if folder.exists() else []:
        pid = int(staging.name.split(".")[3])
        for address, worker_pid in pids.items():
            if worker_pid == pid:
                return address, pid
    return None


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_worker_killed_in_the_middle_of_attribution_is_survived(tiny_audit):
    local = run_audit(load_config(tiny_audit(output="local", cache={"directory": "cache-local"})), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  resources={"GPU": 1}) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(_slow_attribution_plugin())
        path = tiny_audit(output="cluster", cache={"directory": "cache-cluster"},
                          dask={"address": cluster.scheduler_address})
        config = load_config(path)
        cache = Path(config.cache.directory) / "attribute"
        pids = client.run(os.getpid)
        with ThreadPoolExecutor(1) as runner:
            run = runner.submit(run_audit, config, progress=False)
            deadline = time.monotonic() + 60
            victim = None
            while victim is None and time.monotonic() < deadline and not run.done():
                finished = [p for p in cache.iterdir() if not p.name.startswith(".")] if cache.exists() else []
                victim = _staging_of(cache, pids) if finished else None
                time.sleep(0.05)
            assert victim is not None, "no worker was caught writing an attribution entry"
            restrictions = client.run_on_scheduler(lambda dask_scheduler: {
                ts.resource_restrictions and tuple(ts.resource_restrictions.items())
                for ts in dask_scheduler.tasks.values() if str(ts.key).startswith("attribute-")})
            os.kill(victim[1], signal.SIGKILL)  # mid-shard: its staging folder exists only while it computes
            remote = run.result(timeout=90)

    assert restrictions == {(("GPU", 1),)}  # the workers declare a GPU, so every shard asked for one
    # the killed shard re-ran elsewhere (had the kill landed just after its entry was renamed into place, the
    # re-run would find that entry whole and count it as cached: both keep the cache consistent)
    assert sum(remote.stages["attribute"].values()) == 6 and remote.stages["attribute"]["computed"] >= 5
    # the cache has whole entries only: the killed worker's staging folder was swept when its key finished
    assert list(cache.parent.rglob("*.tmp")) == []
    entries = list(cache.iterdir())
    assert len(entries) == 6
    for entry in entries:
        arrays, _meta = read_entry(entry)
        assert open_stored_array(entry, "relevance").shape[0] == len(arrays["index"]) == len(arrays["logits"])
    ours, theirs = (json.loads((o.report.parent / "summary.json").read_text()) for o in (local, remote))
    for a, b in zip(ours["classes"], theirs["classes"], strict=True):
        np.testing.assert_allclose(a["eigenvalues"], b["eigenvalues"], atol=1e-6)
        assert [c["members"] for c in a["clusters"]] == [c["members"] for c in b["clusters"]]
        np.testing.assert_allclose([c["score"] for c in a["clusters"]], [c["score"] for c in b["clusters"]],
                                   atol=1e-5)
