"""``spray.audit``: the Python API for notebooks (in-memory model and data, the CLI's graph and cache)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import spray
from spray.api import pixel_space, read_samples
from spray.cli import main
from spray.data import to_model_input
from spray.errors import EXIT_OK, ConfigError, DataError
from spray.model import module_token

ROOT = Path(__file__).resolve().parents[1]
# the tiny case's settings (tests/audit_cases.py), as keyword sections
TINY = dict(attribution={"shard_size": 16, "batch_size": 8}, preprocessing={"size": [8, 8]},
            analysis={"neighbors": 5, "eigenvalues": 8, "max_clusters": 4}, embedding={"methods": ["tsne"]},
            flagging={"transplant_images": 20})


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3))


def tiny_data(per_class: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of normalised (1, 16, 16) inputs: noise and a bar at a class-specific height."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), per_class)
    images = rng.normal(0, 1, size=(len(labels), 1, 16, 16)).astype(np.float32)
    for i, label in enumerate(labels):
        images[i, 0, 2 + 5 * label : 5 + 5 * label, 2:8] += 3.0
    return images, labels


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[index]), torch.tensor(self.labels[index])


@pytest.mark.e2e  # a Python process of its own: this one has imported torch already
def test_import_spray_does_not_import_torch():
    code = "import sys, spray; assert 'torch' not in sys.modules and 'spray.api' not in sys.modules, sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_audit_is_found_on_the_package():
    import spray.api

    assert spray.audit is spray.api.audit and spray.AuditResult is spray.api.AuditResult
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        spray.not_there  # noqa: B018


def test_a_section_is_validated_like_the_yaml_naming_the_key():
    with pytest.raises(ConfigError, match=r"flagging\.min_cluster_size"):
        spray.audit(tiny_model(), tiny_data(), flagging={"min_cluster_size": 0})
    with pytest.raises(ConfigError, match=r"attribution\.composite"):
        spray.audit(tiny_model(), tiny_data(), attribution={"composite": "no_such_composite"})
    with pytest.raises(ConfigError, match=r"unknown|not_a_section"):
        spray.audit(tiny_model(), tiny_data(), not_a_section={})


def test_model_and_data_come_from_the_arguments_not_from_sections():
    with pytest.raises(ConfigError, match=r"data: given as the dataset argument"):
        spray.audit(tiny_model(), tiny_data(), data={"manifest": "x.csv"})
    with pytest.raises(ConfigError, match=r"audit\.classes: give the classes once"):
        spray.audit(tiny_model(), tiny_data(), classes=[0], audit={"classes": [1]})


@pytest.mark.parametrize("dask", [{"scheduler": "processes"}, {"address": "tcp://127.0.0.1:8786"}])
def test_schedulers_in_other_processes_are_refused_by_name(dask):
    key = "dask.address" if "address" in dask else "dask.scheduler"
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: an in-memory model and dataset are audited by tasks "
                                          r"in this process"):
        spray.audit(tiny_model(), tiny_data(), dask=dask)


def test_bad_samples_are_refused_naming_the_sample():
    images, labels = tiny_data()
    images[5, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"sample 5 has non-finite values"):
        read_samples((images, labels))
    with pytest.raises(DataError, match=r"sample 2: label -1"):
        read_samples((tiny_data()[0], np.array([0, 0, -1] + [0] * 69)))
    with pytest.raises(DataError, match=r"sample 1: image of shape \(1, 8, 8\)"):
        read_samples([(torch.zeros(1, 16, 16), 0), (torch.zeros(1, 8, 8), 0)])
    with pytest.raises(DataError, match=r"4 channels; expected 1 or 3"):
        read_samples((np.zeros((2, 4, 8, 8), np.float32), np.zeros(2)))


def test_a_dataset_and_an_array_pair_read_alike():
    images, labels = tiny_data(per_class=4)
    from_dataset, from_pair = read_samples(PairDataset(images, labels)), read_samples((images, labels))
    np.testing.assert_array_equal(from_dataset[0], from_pair[0])
    np.testing.assert_array_equal(from_dataset[1], from_pair[1])


def test_inputs_map_onto_pixels_in_0_1_and_back_to_what_the_model_takes():
    images = np.random.default_rng(1).normal(-0.4, 2.0, size=(6, 3, 5, 7)).astype(np.float32)
    image, pixels = pixel_space(images)
    assert pixels.shape == (6, 5, 7, 3) and pixels.min() >= 0 and pixels.max() <= 1
    assert np.allclose(pixels.min(axis=(0, 1, 2)), 0) and np.allclose(pixels.max(axis=(0, 1, 2)), 1)
    np.testing.assert_allclose(to_model_input(pixels, image).numpy(), images, atol=1e-5)
    assert image.mode == "RGB" and image.size == (5, 7)


def test_the_model_token_follows_the_state_and_the_class():
    model = tiny_model()
    token = module_token(model)
    assert module_token(tiny_model()) == token
    with torch.no_grad():
        model[0].bias[0] += 1e-3
    assert module_token(model) != token
    assert module_token(nn.Sequential(*tiny_model())) == token  # same classes, same state
    assert module_token(nn.ModuleList(list(tiny_model()))) != token


@pytest.mark.e2e
def test_a_second_call_comes_from_the_cache_and_a_changed_weight_recomputes(tmp_path):
    images, labels = tiny_data()
    model = tiny_model().train()
    cache = {"directory": str(tmp_path / "cache")}
    first = spray.audit(model, (images, labels), classes=[0, 1], cache=cache, **TINY)
    assert model.training, "the caller's module is left as it was"
    assert first.stages["attribute"] == {"computed": 4, "cached": 0}
    again = spray.audit(model, PairDataset(images, labels), classes=[0, 1], cache=cache, **TINY)
    assert all(counts["computed"] == 0 for counts in again.stages.values())
    pd.testing.assert_frame_equal(first.summary, again.summary)
    with torch.no_grad():
        model[-1].bias[1] += 0.5
    changed = spray.audit(model, (images, labels), classes=[0, 1], cache=cache, **TINY)
    assert changed.stages["attribute"] == {"computed": 4, "cached": 0}
    assert list(first.summary.columns[:7]) == ["class", "class_name", "cluster", "size", "class_size", "score",
                                               "flagged"]
    assert len(first.samples) == 48 and set(first.samples["class"]) == {0, 1}
    index = first.write_report(tmp_path / "report", workers=1)
    written = pd.read_csv(tmp_path / "report" / "samples.csv", dtype={"id": str})
    assert index.name == "index.html" and (tmp_path / "report" / "summary.json").is_file()
    pd.testing.assert_frame_equal(written, first.samples.reset_index(drop=True), check_dtype=False)


def demo_example() -> str:
    """The Python block of docs/api.md's "On the demo case" section."""
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = page.split("## On the demo case", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.e2e
def test_the_documented_example_runs_and_flags_what_the_cli_flags_on_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(demo_example(), "docs/api.md (On the demo case)", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, spray.AuditResult)
    assert (tmp_path / "reports" / "notebook" / "index.html").is_file()
    summary = result.summary
    flagged = summary[summary.flagged]
    assert list(flagged["class"]) == [3], "one flagged cluster, in class 3"
    manifest = pd.read_csv(tmp_path / "demo-case" / "images" / "manifest.csv")
    api_members = {manifest.path[int(i)] for i in flagged.iloc[0]["members"]}  # ids are dataset positions

    config = (ROOT / "pipelines" / "demo.yaml").read_text().replace("../", "")  # cache and report in tmp_path
    # the 2-D embeddings are drawn in the report only: without them the flags are the same, sooner
    (tmp_path / "demo.yaml").write_text(config + "\nembedding: {methods: []}\n")
    assert main(["run", str(tmp_path / "demo.yaml"), "--classes", "3", "--quiet"]) == EXIT_OK
    cli = pd.read_csv(tmp_path / "reports" / "demo" / "samples.csv", dtype={"id": str})
    cli_flagged = cli[cli.flagged]
    assert cli_flagged.cluster.nunique() == 1 and set(cli_flagged["class"]) == {3}
    assert set(cli_flagged.id) == api_members
    assert set(manifest.path[manifest.artifact == 1]) & api_members, "the watermarked 3s"
