"""A run killed at any point (SIGKILL: no cleanup at all) and resumed gives the outcome of an undisturbed
run, byte for byte (run metadata aside); two undisturbed runs agree too, whatever the thread count."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from audit_cases import make_tiny_case, tiny_config, write_config
from fault_cases import leftovers, outcome, spray_process
from threadpoolctl import threadpool_limits

from spray.analysis import embed
from spray.config import EmbeddingConfig


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_tiny_case(tmp_path_factory.mktemp("undisturbed"))
    write_config(folder, tiny_config(folder))
    run = spray_process("run", "audit.yaml", "--quiet", cwd=folder)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    return folder


# When to kill: as soon as this exists under the case folder (the run is then inside that stage).
KILL_POINTS = {
    "while attributing": "cache/attribute/.*.tmp",
    "while flagging": "cache/analyse/*/checksums.json",
    "while writing the report": ".report.staging-*",
}


@pytest.mark.e2e
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_at_any_point_resumes_to_the_undisturbed_outcome(point, undisturbed, tmp_path):
    case = make_tiny_case(tmp_path / "case")
    write_config(case, tiny_config(case))
    run = spray_process("run", "audit.yaml", "--quiet", cwd=case)
    deadline = time.monotonic() + 240
    while run.poll() is None and time.monotonic() < deadline and not list(case.glob(KILL_POINTS[point])):
        time.sleep(0.01)
    if run.poll() is not None:
        pytest.skip(f"the run ended before it was {point}")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    resumed = spray_process("run", "audit.yaml", "--quiet", cwd=case)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert outcome(case / "report") == outcome(undisturbed / "report")
    assert not leftovers(case), "the resumed run swept what the killed one left"


@pytest.mark.e2e
def test_a_second_undisturbed_run_gives_the_same_bytes(undisturbed, tmp_path):
    again = make_tiny_case(tmp_path / "again")
    write_config(again, tiny_config(again))
    run = spray_process("run", "audit.yaml", "--quiet", "--no-cache", cwd=again)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert outcome(again / "report") == outcome(undisturbed / "report")


def test_t_sne_gives_the_same_coordinates_whatever_the_thread_count():
    maps = np.random.default_rng(0).normal(size=(400, 64)).astype(np.float32)
    config = EmbeddingConfig(methods=["tsne"])
    coordinates = []
    for threads in (1, 4):
        with threadpool_limits(threads):
            coordinates.append(embed(maps, config)["tsne"])
    assert coordinates[0].tobytes() == coordinates[1].tobytes()
