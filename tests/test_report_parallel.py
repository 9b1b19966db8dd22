"""A many-class report in bounded memory: class pages drawn by worker processes (same bytes as drawn
in-process, a failure names its class, index.html written last, no process for a one-page report),
samples.csv written class by class and summary.json streamed into its file."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from spray.errors import RunError
from spray.report import _pages, write_report
from spray.report.html import MAX_CLASSES_ON_ONE_PAGE, PageContext, ranked
from spray.report.synthetic import synthetic_class, synthetic_run

N_CLASSES = MAX_CLASSES_ON_ONE_PAGE + 2


def small_classes(n: int = N_CLASSES) -> list:
    return [
        synthetic_class(i, f"class {i}", n_clusters=2, per_cluster=6, n_prototypes=1, image_size=8,
                        flagged_cluster=0 if i == 4 else None, embeddings=("tsne",), seed=i)
        for i in range(n)
    ]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path]:
    """The same report written with its class pages drawn in this process and by two worker processes."""
    classes, run = small_classes(), synthetic_run()
    serial = write_report(tmp_path_factory.mktemp("serial"), classes, run, workers=1).parent
    parallel = write_report(tmp_path_factory.mktemp("parallel"), classes, run, workers=2).parent
    return serial, parallel


@pytest.mark.e2e
def test_pages_drawn_by_workers_are_the_bytes_drawn_in_process(both):
    serial, parallel = both
    drawn_here, drawn_by_workers = files(serial), files(parallel)
    assert len([name for name in drawn_here if name.startswith("classes/")]) == N_CLASSES
    assert drawn_by_workers.keys() == drawn_here.keys()  # no temporary file left behind either
    assert [name for name in drawn_here if drawn_here[name] != drawn_by_workers[name]] == []


@pytest.mark.e2e
def test_index_is_written_after_every_class_page(both):
    _, parallel = both
    index = (parallel / "index.html").stat().st_mtime_ns
    assert all(page.stat().st_mtime_ns <= index for page in (parallel / "classes").glob("*.html"))


@pytest.mark.e2e
def test_workers_draw_with_the_callers_matplotlib_settings(tmp_path):
    classes = ranked(small_classes(3))
    context = PageContext.of(classes, synthetic_run())
    for name in ("default", "here", "workers"):
        (tmp_path / name / "classes").mkdir(parents=True)
    _pages.write_class_pages(tmp_path / "default", classes, context, workers=1)
    with matplotlib.rc_context({"axes.facecolor": "#f0f0f0", "font.family": "serif"}):
        _pages.write_class_pages(tmp_path / "here", classes, context, workers=1)
        _pages.write_class_pages(tmp_path / "workers", classes, context, workers=2)
    assert files(tmp_path / "here") != files(tmp_path / "default")  # the settings show in the figures
    assert files(tmp_path / "workers") == files(tmp_path / "here")


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.e2e)])
def test_a_page_that_cannot_be_drawn_names_its_class_and_index_is_not_written(tmp_path, workers):
    classes = small_classes()
    classes[5].class_name = "broken"
    classes[5].clusters[0].prototype_images[0] = np.zeros(3, np.uint8)  # not an image
    with pytest.raises(RunError, match=r"class 5 · broken could not be drawn: ValueError"):
        write_report(tmp_path, classes, synthetic_run(), workers=workers)
    # the report's files appear together or not at all, and its staging folder is gone
    assert not [name for name in ("summary.json", "samples.csv", "index.html", "classes") if (tmp_path / name).exists()]
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))


class _KillsItsUnpickler(str):
    """A class note that ends the process that unpickles it, as a worker killed mid-run would end."""

    def __reduce__(self):
        return os._exit, (3,)


@pytest.mark.e2e
def test_a_worker_that_dies_is_reported_and_index_is_not_written(tmp_path):
    classes = small_classes()
    classes[3].notes = [_KillsItsUnpickler("a note")]
    with pytest.raises(RunError, match="worker process drawing the report's class pages died"):
        write_report(tmp_path, classes, synthetic_run(), workers=2)
    assert not (tmp_path / "index.html").exists()


def test_a_report_on_one_page_or_with_one_worker_starts_no_process(tmp_path, monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(_pages, "ProcessPoolExecutor", no_pool)
    write_report(tmp_path / "one-page", small_classes(3), synthetic_run(), workers=4)
    assert not (tmp_path / "one-page" / "classes").exists()
    classes = ranked(small_classes(2))
    (tmp_path / "one-worker" / "classes").mkdir(parents=True)
    _pages.write_class_pages(tmp_path / "one-worker", classes, PageContext.of(classes, synthetic_run()), workers=1)
    assert (tmp_path / "one-worker" / "classes" / "0.html").is_file()


def test_samples_csv_written_class_by_class_is_the_text_of_the_whole_table(tmp_path):
    from spray.report.samples import samples_csv, write_samples_csv

    classes = small_classes(3)
    classes[0].ids[0] = 'a, "quoted"\nid'
    classes[1].embeddings = {}  # empty tsne columns for this class
    for chosen in (classes, []):
        write_samples_csv(tmp_path / "samples.csv", chosen)
        assert (tmp_path / "samples.csv").read_bytes() == samples_csv(chosen).encode("utf-8")


def test_summary_json_streamed_into_its_file_is_the_text_of_the_whole_document(tmp_path):
    import json

    from spray.report.summary import build_summary

    classes, run = small_classes(3), synthetic_run()
    classes[0].class_name = "zéro \"quoted\""
    write_report(tmp_path, classes, run)
    expected = json.dumps(build_summary(classes, run), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    assert (tmp_path / "summary.json").read_bytes() == expected.encode("utf-8")
