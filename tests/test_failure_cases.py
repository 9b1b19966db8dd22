"""Each way an audit can be set up wrong exits with its documented code, a message naming the culprit, and no
traceback, from `run` and from `validate` alike (both call spray.checks), and before anything is computed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from audit_cases import tiny_config, write_config

from spray.cli import main
from spray.errors import EXIT_CONFIG, EXIT_DATA, EXIT_MODEL, EXIT_OK


def _relabel(case: Path, names: dict[int, str], keep: Callable[[int], bool] = lambda label: True) -> None:
    """Rewrite the tiny manifest with string labels ``names[label]``, keeping rows whose label passes ``keep``."""
    manifest = case / "images" / "manifest.csv"
    rows = manifest.read_text().splitlines()
    kept = [row for row in rows[1:] if keep(int(row.split(",")[1]))]
    manifest.write_text("path,label\n" + "".join(
        f"{row.split(',')[0]},{names[int(row.split(',')[1])]}\n" for row in kept))


def _missing_class(case: Path) -> dict:
    # outputs are (circle, cross, square); no cross in the data: sorted numbering would audit square as cross
    _relabel(case, {0: "circle", 1: "cross", 2: "square"}, keep=lambda label: label != 1)
    return tiny_config(case)


def _extra_class(case: Path) -> dict:
    # three named classes in the data, a model with two outputs: 'square' would map to no output
    _relabel(case, {0: "circle", 1: "cross", 2: "square"})
    config = tiny_config(case)
    config["model"] = {"factory": "models.py:build", "kwargs": {"n_classes": 2}}
    return config


def _label_beyond_outputs(case: Path) -> dict:
    manifest = case / "images" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",2\n", ",7\n"))
    return tiny_config(case)


def _empty_folder_in_the_middle(case: Path) -> dict:
    root = case / "images"
    (root / "manifest.csv").unlink()
    shutil.rmtree(root / "c1")
    (root / "c1").mkdir()
    config = tiny_config(case)
    config["data"] = {"root": "images", "image": {"mode": "L", "size": [16, 16]}}
    return config


def _grey_images_for_an_rgb_model(case: Path) -> dict:
    config = tiny_config(case)
    config["model"] = {"factory": "models.py:build", "kwargs": {"channels": 3}}
    return config


def _a_size_the_model_cannot_take(case: Path) -> dict:
    config = tiny_config(case)
    config["data"]["image"]["size"] = [20, 20]
    return config


def _output_is_a_file(case: Path) -> dict:
    (case / "report").write_text("not a folder")
    return tiny_config(case)


CASES = {
    # name: (make the config, exit code, words the message must contain)
    "string labels missing a class": (_missing_class, EXIT_DATA, ["'circle', 'square'", "3 outputs",
                                                                  "data.class_names: [circle, square, "]),
    "string labels beyond the outputs": (_extra_class, EXIT_DATA, ["'square'", "2 outputs", "would map to no output"]),
    "integer label beyond the outputs": (_label_beyond_outputs, EXIT_DATA, ["label(s) 7", "3 outputs", "c2/"]),
    "empty class folder in the middle": (_empty_folder_in_the_middle, EXIT_DATA, ["'c1'", "contain no image"]),
    "mode L for a 3-channel model": (_grey_images_for_an_rgb_model, EXIT_CONFIG, ["data.image.mode", "3 input channels"]),
    "an image size the model cannot take": (_a_size_the_model_cannot_take, EXIT_MODEL, ["data.image.size", "1, 20, 20)", "mat1 and mat2"]),
    "output pointing at a file": (_output_is_a_file, EXIT_CONFIG, ["output:", "is a file"]),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case_name", list(CASES))
def test_each_mistake_has_its_exit_code_and_names_the_culprit(case_name, command, tiny_case, capsys):
    make, code, words = CASES[case_name]
    config = write_config(tiny_case, make(tiny_case))
    assert main([command, str(config), "--quiet"] if command == "run" else [command, str(config)]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    # refused before any attribution: no cache entry was written
    assert not (tiny_case / "cache" / "attribute").exists()


@pytest.mark.e2e
def test_string_labels_with_class_names_are_audited_against_the_named_outputs(tiny_case, capsys):
    """The class absent from the data keeps its output: square is explained as output 2, not 1."""
    _relabel(tiny_case, {0: "circle", 1: "cross", 2: "square"}, keep=lambda label: label != 1)
    config = tiny_config(tiny_case)
    config["data"]["class_names"] = ["circle", "cross", "square"]
    path = write_config(tiny_case, config)
    assert main(["validate", str(path)]) == EXIT_OK
    assert "output 2 <- 'square' (24 samples)" in capsys.readouterr().out
    assert main(["run", str(path), "--quiet"]) == EXIT_OK
    summary = json.loads((tiny_case / "report" / "summary.json").read_text())
    assert [(c["class"], c["name"]) for c in summary["classes"]] == [(0, "circle"), (2, "square")]
    assert summary["label_mapping"] == {"source": "class_names", "outputs": [
        {"output": 0, "name": "circle"}, {"output": 1, "name": "cross"}, {"output": 2, "name": "square"}]}


def test_validate_catches_a_misspelt_factory_and_foreign_weights(tiny_case, capsys):
    config = tiny_config(tiny_case)
    config["model"] = {"factory": "models.py:biuld", "weights": "model.pt"}
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_MODEL
    assert "did you mean 'build'" in capsys.readouterr().err
    config["model"] = {"factory": "models.py:build", "kwargs": {"n_classes": 5}, "weights": "model.pt"}
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_MODEL
    assert "shape mismatches" in capsys.readouterr().err
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3)), tiny_case / "whole.pt")
    config["model"] = {"factory": "models.py:build", "weights": "whole.pt"}
    assert main(["validate", str(write_config(tiny_case, config))]) == EXIT_MODEL
    assert "a whole pickled model?" in capsys.readouterr().err
