"""`spray init MODEL IMAGES` writes a commented starter config that validates for a typical case."""

from __future__ import annotations

import shutil

import yaml

from spray.cli import main
from spray.errors import EXIT_CONFIG, EXIT_DATA, EXIT_OK


def test_the_starter_config_for_a_manifest_validates(tiny_case, capsys):
    config = tiny_case / "starter.yaml"
    assert main(["init", str(tiny_case / "models.py"), str(tiny_case / "images"), "--weights",
                 str(tiny_case / "model.pt"), "--config", str(config)]) == EXIT_OK
    written = yaml.safe_load(config.read_text())
    assert written["model"] == {"factory": "models.py:build", "kwargs": {}, "weights": "model.pt"}
    assert written["data"]["manifest"] == "images/manifest.csv"
    assert written["data"]["image"]["mode"] == "L" and written["data"]["image"]["size"] == [16, 16]
    assert "# CHECK" in config.read_text()
    assert main(["validate", str(config)]) == EXIT_OK
    assert main(["init", str(tiny_case / "models.py"), str(tiny_case / "images"), "--config", str(config)]) == EXIT_CONFIG
    assert "exists" in capsys.readouterr().err


def test_class_folders_are_listed_for_class_names(tiny_case):
    (tiny_case / "images" / "manifest.csv").unlink()
    config = tiny_case / "folders.yaml"
    assert main(["init", str(tiny_case / "models.py"), str(tiny_case / "images"), "--config", str(config)]) == EXIT_OK
    text = config.read_text()
    assert yaml.safe_load(text)["data"]["root"] == "images"
    assert "# class_names: [c0, c1, c2]" in text


def test_a_folder_without_images_is_a_data_error(tiny_case, capsys):
    shutil.rmtree(tiny_case / "images")
    (tiny_case / "images" / "empty").mkdir(parents=True)
    assert main(["init", str(tiny_case / "models.py"), str(tiny_case / "images"),
                 "--config", str(tiny_case / "x.yaml")]) == EXIT_DATA
    assert "no readable image" in capsys.readouterr().err
