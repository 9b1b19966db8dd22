"""Export to ViRelAy (spray.export): the HDF5 layout its loader reads."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from spray.export import CLUSTERING, ExportedClass, SampleBatch, write_virelay_project

h5py = pytest.importorskip("h5py")


def _project(folder: Path, n_per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    n = 2 * n_per_class
    labels = np.repeat([1, 3], n_per_class)
    batches = [SampleBatch(pixels=rng.uniform(size=(4, 3, 8, 8)).astype(np.float32),
                           relevance=rng.normal(size=(4, 3, 8, 8)).astype(np.float32),
                           logits=rng.normal(size=(4, 5)).astype(np.float32), labels=labels[start : start + 4])
               for start in range(0, n, 4)]
    classes = [ExportedClass(index=c, rows=np.flatnonzero(labels == c), eigenvalues=np.array([0.0, 0.1, 0.5]),
                             eigenvectors=rng.normal(size=(n_per_class, 3)),
                             clusters=np.arange(n_per_class) % 2,
                             embeddings={"tsne": rng.normal(size=(n_per_class, 2))})
               for c in (1, 3)]
    return write_virelay_project(folder, name="demo", model="cnn", method="epsilon_plus_flat",
                                 class_names=[f"digit {i}" for i in range(5)], n_samples=n, batches=batches,
                                 classes=classes)


def test_the_project_names_files_in_corelays_layout(tmp_path):
    project = yaml.safe_load(_project(tmp_path).read_text())["project"]
    assert project["dataset"]["type"] == "hdf5" and project["dataset"]["input_width"] == 8
    with h5py.File(tmp_path / project["dataset"]["path"]) as inputs:
        assert inputs["data"].shape == (12, 3, 8, 8) and list(inputs["label"][:6]) == [1] * 6
    with h5py.File(tmp_path / project["attributions"]["sources"][0]) as attributions:
        assert attributions["attribution"].shape == (12, 3, 8, 8)
        assert attributions["prediction"].shape == (12, 5)
        np.testing.assert_array_equal(attributions["index"][:], np.arange(12))
    with h5py.File(tmp_path / project["analyses"][0]["sources"][0]) as analysis:
        assert sorted(analysis) == ["1", "3"]
        group = analysis["3"]
        np.testing.assert_array_equal(group["index"][:], np.arange(6, 12))
        np.testing.assert_allclose(group["embedding/spectral"].attrs["eigenvalue"], [0.0, 0.1, 0.5])
        assert group[f"cluster/{CLUSTERING}"].attrs["k"] == 2
        assert group["embedding/tsne"].shape == (6, 2)


def test_batches_must_hold_the_announced_samples(tmp_path):
    batch = SampleBatch(np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 1, 4, 4), np.float32),
                        np.zeros((2, 3), np.float32), np.zeros(2, int))
    exported = ExportedClass(0, np.arange(2), np.zeros(2), np.zeros((2, 2)), np.zeros(2, int))
    with pytest.raises(ValueError, match="held 2 samples, 3 were announced"):
        write_virelay_project(tmp_path, name="x", model="m", method="lrp", class_names=["a"], n_samples=3,
                              batches=[batch], classes=[exported])


def test_every_class_needs_the_same_embeddings(tmp_path):
    batch = SampleBatch(np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 1, 4, 4), np.float32),
                        np.zeros((2, 3), np.float32), np.array([0, 1]))
    first = ExportedClass(0, np.array([0]), np.zeros(1), np.zeros((1, 1)), np.zeros(1, int),
                          {"tsne": np.zeros((1, 2))})
    second = ExportedClass(1, np.array([1]), np.zeros(1), np.zeros((1, 1)), np.zeros(1, int))
    with pytest.raises(ValueError, match="class 1 has embeddings"):
        write_virelay_project(tmp_path, name="x", model="m", method="lrp", class_names=["a", "b"], n_samples=2,
                              batches=[batch], classes=[first, second])


@pytest.mark.skipif(not os.environ.get("SPRAY_VIRELAY_PYTHON"),
                    reason="SPRAY_VIRELAY_PYTHON names no python with ViRelAy (tests/virelay_check.py says how)")
def test_virelays_own_loaders_read_the_export(tmp_path):
    path = _project(tmp_path)
    done = subprocess.run([os.environ["SPRAY_VIRELAY_PYTHON"], str(Path(__file__).parent / "virelay_check.py"),
                           str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "class 3 (digit 3): 6 attributions, spray-spectral with 2 clusters" in done.stdout



# --- python -m spray export virelay CONFIG OUTPUT_DIR ------------------------------------------------------

@pytest.fixture
def audited_then_exported(tiny_audit, tiny_case, monkeypatch) -> tuple[Path, Path]:
    """The tiny case audited, then exported from the cache (attribution would fail if it ran again)."""
    import spray.attribute
    from spray.cli import main

    config = tiny_audit()
    assert main(["run", str(config), "--quiet"]) == 0

    def no_attribution(*args, **kwargs):
        raise AssertionError("the export recomputed an attribution that the run had cached")

    monkeypatch.setattr(spray.attribute, "attribute_shard", no_attribution)
    assert main(["export", "virelay", str(config), str(tiny_case / "virelay"), "--quiet"]) == 0
    return tiny_case / "report", tiny_case / "virelay" / "project.yaml"


@pytest.mark.e2e
def test_an_exported_audit_holds_the_reports_samples_logits_and_clusters(audited_then_exported):
    import csv

    report, project_path = audited_then_exported
    rows = list(csv.DictReader((report / "samples.csv").open()))
    project = yaml.safe_load(project_path.read_text())["project"]
    folder = project_path.parent
    assert project["model"] == "models.py:build"  # shown relative to the config, as in the report
    with h5py.File(folder / project["dataset"]["path"]) as inputs, \
            h5py.File(folder / project["attributions"]["sources"][0]) as attributions, \
            h5py.File(folder / project["analyses"][0]["sources"][0]) as analysis:
        assert inputs["data"].shape == (72, 1, 16, 16) and 0 <= inputs["data"][:].min() <= inputs["data"][:].max() <= 1
        assert attributions["attribution"].shape == (72, 1, 16, 16)
        assert sorted(analysis) == ["0", "1", "2"]
        for index in (0, 1, 2):
            reported = [row for row in rows if int(row["class"]) == index]
            group = analysis[str(index)]
            exported_rows = group["index"][:]
            assert len(exported_rows) == len(reported) == 24
            np.testing.assert_array_equal(inputs["label"][exported_rows], index)
            np.testing.assert_allclose(attributions["prediction"][exported_rows, index],
                                       [float(row["logit"]) for row in reported], rtol=1e-5)
            np.testing.assert_array_equal(group[f"cluster/{CLUSTERING}"][:], [int(row["cluster"]) for row in reported])
            np.testing.assert_allclose(group["embedding/tsne"][:, 0], [float(row["tsne_x"]) for row in reported],
                                       rtol=1e-5)
            assert group["embedding/spectral"].shape[0] == 24


@pytest.mark.e2e
@pytest.mark.skipif(not os.environ.get("SPRAY_VIRELAY_PYTHON"),
                    reason="SPRAY_VIRELAY_PYTHON names no python with ViRelAy (tests/virelay_check.py says how)")
def test_virelay_reads_an_exported_audit(audited_then_exported):
    _, project_path = audited_then_exported
    done = subprocess.run([os.environ["SPRAY_VIRELAY_PYTHON"], str(Path(__file__).parent / "virelay_check.py"),
                           str(project_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dataset of 72 samples" in done.stdout
    assert "spectral / class 2 (2): 24 attributions" in done.stdout


def test_export_without_h5py_names_the_extra(tiny_audit, tiny_case, monkeypatch, capsys):
    import sys

    from spray.cli import main
    from spray.errors import EXIT_CONFIG

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    assert main(["export", "virelay", str(tiny_audit()), str(tiny_case / "virelay")]) == EXIT_CONFIG
    assert 'pip install -e ".[virelay]"' in capsys.readouterr().err
    assert not (tiny_case / "cache").exists()
