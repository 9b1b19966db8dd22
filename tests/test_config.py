"""The config schema: validated when loaded, errors by key path, paths relative to the config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spray.config import load_config
from spray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    return path


MINIMAL = "model: {factory: models.py:build, weights: model.pt}\ndata: {manifest: images/manifest.csv}\n"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + "output: out/report\n"))
    assert config.model.weights == tmp_path / "model.pt"
    assert config.model.factory == f"{tmp_path / 'models.py'}:build"
    assert config.data.manifest == tmp_path / "images" / "manifest.csv"
    assert config.output == tmp_path / "out" / "report"
    assert config.cache.directory == tmp_path / ".spray-cache"


def test_defaults_are_the_documented_ones(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.attribution.composite == "epsilon_plus_flat"
    assert config.preprocessing.size == (32, 32) and config.preprocessing.normalize == "sum_abs"
    assert config.analysis.neighbors == 10 and config.analysis.eigenvalues == 32
    assert config.audit.classes is None and config.dask.address is None


def test_an_unknown_key_suggests_the_closest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'preprocesing'; did you mean 'preprocessing'"):
        load_config(write(tmp_path, MINIMAL + "preprocesing: {size: [16, 16]}\n"))


def test_every_error_is_listed_with_its_key_path(tmp_path):
    text = MINIMAL + "analysis: {neighbors: 0, eigenvalues: lots}\nattribution: {device: tpu}\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert "analysis.neighbors" in message and "analysis.eigenvalues" in message
    assert "attribution.device" in message and "'auto', 'cpu' or 'cuda'" in message


def test_a_factory_without_a_callable_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.factory.*models\.py:build_model"):
        load_config(write(tmp_path, "model: {factory: models.py}\ndata: {manifest: m.csv}\n"))


def test_exactly_one_data_source(tmp_path):
    with pytest.raises(ConfigError, match=r"exactly one of data\.manifest"):
        load_config(write(tmp_path, "model: {factory: m.py:f}\ndata: {manifest: a.csv, root: imgs}\n"))


def test_mean_and_std_must_match_the_image_mode(tmp_path):
    text = MINIMAL.replace("manifest: images/manifest.csv", "manifest: m.csv, image: {mode: RGB, mean: [0.5, 0.5]}")
    with pytest.raises(ConfigError, match="mean has 2 values; mode RGB has 3"):
        load_config(write(tmp_path, text))


def test_the_cluster_range_must_fit_the_eigenvalues(tmp_path):
    with pytest.raises(ConfigError, match="max_clusters"):
        load_config(write(tmp_path, MINIMAL + "analysis: {eigenvalues: 8, max_clusters: 8}\n"))


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"audit.yaml: line \d+, column \d+ is not valid YAML"):
        load_config(write(tmp_path, "model:\n  factory: x.py:f\n  kwargs: {a: 1\ndata: {root: x}\n"))


def test_the_demo_config_is_valid():
    config = load_config(ROOT / "pipelines" / "demo.yaml")
    assert config.demo is not None and config.demo.artifact == "watermark"


def test_the_configuration_page_is_the_table_generated_from_the_schema():
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "config_table.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # docs/configuration.md is stale: run tools/config_table.py
