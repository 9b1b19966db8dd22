"""Runs that share a demo case, a cache or an output folder never corrupt each other nor publish partial
data; a run with worker processes that is killed takes its workers with it."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from audit_cases import make_tiny_case, tiny_config, write_config
from fault_cases import leftovers, outcome, spray_process

from spray.demo import DemoConfig, build_case


@pytest.mark.e2e
def test_two_first_demo_builds_at_once_build_one_whole_case(tmp_path):
    config = DemoConfig(directory=tmp_path / "demo", variants=1, epochs=1)
    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(build_case, [config, config]))
    assert records[0] == records[1]
    manifest = (tmp_path / "demo" / "images" / "manifest.csv").read_text().splitlines()[1:]
    assert len(manifest) == records[0]["n_images"]
    assert all((tmp_path / "demo" / "images" / row.split(",")[0]).is_file() for row in manifest)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["demo"]


@pytest.mark.e2e
def test_two_runs_on_one_cache_and_output_give_one_whole_report(tmp_path):
    case = make_tiny_case(tmp_path / "case")
    write_config(case, tiny_config(case))
    runs = [spray_process("run", "audit.yaml", "--quiet", cwd=case) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    alone = make_tiny_case(tmp_path / "alone")
    write_config(alone, tiny_config(alone))
    run = spray_process("run", "audit.yaml", "--quiet", cwd=alone)
    assert run.wait(timeout=300) == 0
    assert outcome(case / "report") == outcome(alone / "report")
    assert (case / "report" / "index.html").is_file()
    assert not leftovers(case)


@pytest.mark.e2e
def test_a_killed_run_with_worker_processes_leaves_no_worker_behind(tmp_path):
    psutil = pytest.importorskip("psutil")
    case = make_tiny_case(tmp_path / "case")
    write_config(case, tiny_config(case, dask={"scheduler": "processes", "workers": 2}))
    run = spray_process("run", "audit.yaml", "--quiet", cwd=case)
    workers: list = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        workers = [p for p in psutil.Process(run.pid).children(recursive=True)]
        if len(workers) >= 2 and any((case / "cache").glob("*/.*.tmp")):
            break
        time.sleep(0.05)
    assert workers, "the run started no worker processes"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers still running after the run was killed: {[p.pid for p in alive]}"
