"""The pipeline runs the four stages as cached Dask tasks: what is recomputed, and when."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_cases import tiny_config, write_config

from spray.config import load_config
from spray.errors import DataError, ModelError, RunError
from spray.pipeline import run_audit

pytestmark = pytest.mark.e2e  # every test here runs the whole pipeline


def computed(outcome) -> dict[str, int]:
    return {stage: counts["computed"] for stage, counts in outcome.stages.items()}


def test_first_run_computes_every_stage_and_writes_the_outputs(tiny_audit):
    outcome = run_audit(load_config(tiny_audit()), progress=False)
    assert computed(outcome) == {"attribute": 6, "preprocess": 3, "analyse": 3, "embed": 3, "flag": 3,
                                 "evaluate": 3}
    folder = outcome.report.parent
    summary = json.loads((folder / "summary.json").read_text())
    assert [c["class"] for c in summary["classes"]] == [0, 1, 2]
    assert all(c["n_samples"] == 24 for c in summary["classes"])
    members = sorted(m for c in summary["classes"] for cluster in c["clusters"] for m in cluster["members"])
    assert len(members) == 72 and len(set(members)) == 72
    assert (folder / "samples.csv").read_text().count("\n") == 73


def test_rerunning_an_unchanged_config_executes_no_stage(tiny_audit):
    config = load_config(tiny_audit())
    first = run_audit(config, progress=False)
    second = run_audit(config, progress=False)
    assert set(computed(second).values()) == {0}
    assert sum(c["cached"] for c in second.stages.values()) == sum(c["computed"] for c in first.stages.values())
    assert [r.n_clusters for r in second.classes] == [r.n_clusters for r in first.classes]


def test_an_analysis_change_recomputes_only_analysis_onward(tiny_audit):
    run_audit(load_config(tiny_audit()), progress=False)
    changed = tiny_audit(analysis={"neighbors": 4, "eigenvalues": 8, "max_clusters": 4})
    outcome = run_audit(load_config(changed), progress=False)
    assert computed(outcome) == {"attribute": 0, "preprocess": 0, "analyse": 3, "embed": 0, "flag": 3,
                                 "evaluate": 0}


def test_new_weights_recompute_everything(tiny_audit, tiny_case):
    config = load_config(tiny_audit())
    run_audit(config, progress=False)
    weights = torch.load(tiny_case / "model.pt", weights_only=True)
    weights["4.bias"] += 1.0
    torch.save(weights, tiny_case / "model.pt")
    outcome = run_audit(config, progress=False)
    assert computed(outcome) == {"attribute": 6, "preprocess": 3, "analyse": 3, "embed": 3, "flag": 3,
                                 "evaluate": 3}


def test_a_changed_image_recomputes_its_shard_and_what_depends_on_it(tiny_audit, tiny_case):
    config = load_config(tiny_audit())
    run_audit(config, progress=False)
    image = tiny_case / "images" / "c1" / "005.png"
    from PIL import Image

    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    outcome = run_audit(config, progress=False)
    # class 1's first shard, its downstream; the flag stages of classes 0 and 2 transplant into that image
    assert outcome.stages["attribute"] == {"computed": 1, "cached": 5}
    assert outcome.stages["preprocess"] == {"computed": 1, "cached": 2}
    assert outcome.stages["analyse"]["computed"] == 1


def test_an_interrupted_run_resumes_from_the_finished_shards(tiny_audit, monkeypatch):
    config = load_config(tiny_audit())

    def crash(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr("spray.flag.score_clusters", crash)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_audit(config, progress=False)
    cache = Path(config.cache.directory)
    assert list(cache.rglob("*.tmp")) == []
    finished = len(list((cache / "attribute").iterdir()))
    assert finished >= 1
    monkeypatch.undo()
    outcome = run_audit(config, progress=False)
    # Tasks already handed to a thread when the crash surfaced may still finish and store their entries, so
    # at least the shards finished before the crash come from the cache.
    assert outcome.stages["attribute"]["cached"] >= finished
    assert sum(outcome.stages["attribute"].values()) == 6
    assert len(outcome.classes) == 3


def test_no_cache_stores_nothing(tiny_audit):
    config = load_config(tiny_audit())
    run_audit(config, use_cache=False, progress=False)
    assert not Path(config.cache.directory).exists()


def test_a_corrupt_image_is_skipped_and_listed_in_the_report(tiny_audit, tiny_case):
    (tiny_case / "images" / "c2" / "007.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    outcome = run_audit(load_config(tiny_audit()), progress=False)
    summary = json.loads((outcome.report.parent / "summary.json").read_text())
    skipped = {item["id"]: item["reason"] for item in summary["skipped_samples"]}
    assert "c2/007.png" in skipped and "decode" in skipped["c2/007.png"]
    assert summary["classes"][2]["n_samples"] == 23
    assert "c2/007.png" in outcome.report.read_text()


def test_a_class_with_fewer_samples_than_the_knn_needs_is_named(tiny_case):
    manifest = tiny_case / "images" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("c2/") or line.startswith(("c2/000", "c2/001", "c2/002"))]
    manifest.write_text("\n".join(kept) + "\n")
    path = write_config(tiny_case, tiny_config(tiny_case, audit={"classes": [0, 2]}))
    with pytest.raises(DataError, match=r"class '2' \(label 2\) has 3 sample\(s\).*analysis.neighbors"):
        run_audit(load_config(path), progress=False)
    # auditing every class skips the small one with the reason, and audits the rest
    outcome = run_audit(load_config(write_config(tiny_case, tiny_config(tiny_case))), progress=False)
    assert [r.class_index for r in outcome.classes] == [0, 1]
    assert "3 sample(s)" in outcome.skipped_classes[0].reason


def test_weights_that_do_not_fit_the_model_are_named(tiny_case):
    torch.save({"0.weight": torch.zeros(8, 1, 3, 3)}, tiny_case / "model.pt")
    path = write_config(tiny_case, tiny_config(tiny_case))
    with pytest.raises(ModelError) as error:
        run_audit(load_config(path), progress=False)
    message = str(error.value)
    assert "model.pt" in message and "0.weight" in message and "4.bias" in message


def test_an_unsupported_layer_is_named_before_anything_runs(tiny_case):
    (tiny_case / "models.py").write_text(
        "from torch import nn\n"
        "class Odd(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.sort(dim=-1).values\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Odd(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3))\n"
    )
    path = write_config(tiny_case, tiny_config(tiny_case, model={"factory": "models.py:build"}))
    with pytest.raises(ModelError, match="sort"):
        run_audit(load_config(path), progress=False)
    assert not (tiny_case / "cache").exists()


def test_an_unreachable_cluster_is_a_run_error(tiny_audit):
    config = load_config(tiny_audit(dask={"address": "tcp://127.0.0.1:9", "connect_timeout": 0.5}))
    with pytest.raises(RunError, match=r"dask\.address"):
        run_audit(config, progress=False)


def test_a_sample_with_a_nan_heatmap_is_skipped_and_named(tiny_audit, monkeypatch):
    import spray.attribute

    prepare = spray.attribute.prepare_attributor

    def poisoned(*args, **kwargs):
        engine = prepare(*args, **kwargs)

        def explain(x, targets):
            logits, relevance = engine(x, targets)
            relevance[0, 0, 0, 0] = float("nan")  # the first image of every batch
            return logits, relevance

        explain.rules, explain.composite_name = engine.rules, engine.composite_name
        return explain

    monkeypatch.setattr(spray.attribute, "prepare_attributor", poisoned)
    outcome = run_audit(load_config(tiny_audit()), progress=False)
    summary = json.loads((outcome.report.parent / "summary.json").read_text())
    skipped = {item["id"]: item["reason"] for item in summary["skipped_samples"]}
    assert "c0/000.png" in skipped and "non-finite" in skipped["c0/000.png"]
    assert all(c["n_samples"] < 24 for c in summary["classes"])


def test_an_rgb_folder_layout_audits_end_to_end(tmp_path):
    from audit_cases import make_tiny_case

    case = make_tiny_case(tmp_path / "rgb", rgb=True)
    config = tiny_config(case, model={"factory": "models.py:build", "kwargs": {"channels": 3}, "weights": "model.pt"},
                         data={"root": "images", "image": {"mode": "RGB", "size": [16, 16], "mean": [0.5, 0.4, 0.3],
                                                           "std": [0.2, 0.2, 0.2]}},
                         attribution={"composite": "epsilon_gamma_box", "shard_size": 16, "batch_size": 8},
                         audit={"classes": ["c1"]})
    outcome = run_audit(load_config(write_config(case, config)), progress=False)
    (result,) = outcome.classes
    assert result.class_name == "c1" and result.n_samples == 24
    assert result.ids[0] == "c1/000.png"
    assert np.all(np.isfinite(result.conservation))


def test_unchanged_images_are_not_read_again_to_build_the_cache_keys(tiny_audit, monkeypatch):
    config = load_config(tiny_audit())
    run_audit(config, progress=False)

    def no_reading(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr("spray.data.file_digest", no_reading)
    outcome = run_audit(config, progress=False)
    assert set(computed(outcome).values()) == {0}


def test_an_audited_class_without_samples_is_named(tiny_case):
    config = tiny_config(tiny_case, audit={"classes": ["d"]},
                         model={"factory": "models.py:build", "kwargs": {"n_classes": 4}},
                         data={"manifest": "images/manifest.csv", "image": {"mode": "L", "size": [16, 16]},
                               "class_names": ["a", "b", "c", "d"]})
    with pytest.raises(DataError, match=r"class 'd' \(label 3\) has no sample in .*manifest.csv"):
        run_audit(load_config(write_config(tiny_case, config)), progress=False)


def test_an_image_that_breaks_during_the_run_stops_flagging_and_is_named(tiny_audit, monkeypatch):
    import spray.flag
    from spray.data import load_dataset

    config = load_config(tiny_audit(audit={"classes": [1]}))
    victim = load_dataset(config.data).by_class()[1][0]
    measured = spray.flag.score_clusters

    def break_an_image_then_score(*args, **kwargs):
        victim.path.write_bytes(b"not an image any more")  # flagging reads the class again, after attribution
        return measured(*args, **kwargs)

    monkeypatch.setattr(spray.flag, "score_clusters", break_an_image_then_score)
    with pytest.raises(RunError, match=f"class 1: sample {victim.id} can no longer be read .* re-run"):
        run_audit(config, use_cache=False, progress=False)
