"""spray.model: a factory and a state_dict become a model in eval mode; every failure names its culprit."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from spray.config import ModelConfig
from spray.errors import ModelError
from spray.model import load_model, model_token

FACTORY = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, hidden=4, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, hidden, 3)
        self.bn = nn.BatchNorm2d(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean(dim=(2, 3)))


def build_model(hidden=4, classes=3):
    return TinyNet(hidden, classes)


def build_model_fails(hidden=4):
    raise ValueError("hidden must be even")


def build_not_a_model():
    return {"conv": 1}


def build_ready():
    torch.manual_seed(0)
    return TinyNet().train()
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def factory_file(tmp_path) -> Path:
    return write(tmp_path / "models.py", FACTORY)


def save_weights(factory_file: Path, path: Path, seed: int = 0, **kwargs) -> Path:
    """Weights of TinyNet built from the test's own factory file, as a user would save them."""
    torch.manual_seed(seed)
    model = load_model(ModelConfig(factory=f"{factory_file}:build_model", kwargs=kwargs))
    torch.save(model.state_dict(), path)
    return path


def config(factory_file: Path, name: str = "build_model", weights: Path | None = None, **kwargs) -> ModelConfig:
    return ModelConfig(factory=f"{factory_file}:{name}", weights=weights, kwargs=kwargs)


# --- loading -------------------------------------------------------------------------------------------------


def test_a_factory_and_its_weights_load_into_an_eval_model_on_cpu(factory_file, tmp_path):
    weights = save_weights(factory_file, tmp_path / "model.pt", seed=1, hidden=6)

    model = load_model(config(factory_file, weights=weights, hidden=6))

    assert isinstance(model, nn.Module) and not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    expected = torch.load(weights, weights_only=True)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.items())
    assert model(torch.zeros(2, 1, 5, 5)).shape == (2, 3)


def test_without_weights_the_factory_model_is_used_as_is_in_eval_mode(factory_file):
    model = load_model(config(factory_file, name="build_ready"))
    assert not model.training


def test_a_factory_may_import_its_sibling_modules(tmp_path):
    write(tmp_path / "blocks.py", "from torch import nn\nBlock = nn.Linear\n")
    factory = write(tmp_path / "net.py", "from blocks import Block\n\ndef build():\n    return Block(2, 3)\n")
    model = load_model(ModelConfig(factory=f"{factory}:build"))
    assert isinstance(model, nn.Linear)
    assert str(tmp_path) not in sys.path  # the folder is on sys.path only while importing


def test_a_factory_file_runs_once_so_task_threads_never_see_sys_path_change(tmp_path, monkeypatch):
    """Loading the model in a task thread must not shift sys.path under another thread's import (which then
    misses site-packages); an unchanged file is executed once per process, an edited one again."""
    factory = write(tmp_path / "net.py", "from torch import nn\nRUNS = []\nRUNS.append(1)\n"
                                         "def build():\n    return nn.Linear(2, len(RUNS) + 2)\n")
    load_model(ModelConfig(factory=f"{factory}:build"))
    inserted = []

    class Watched(list):
        def insert(self, index, value):
            inserted.append(value)
            super().insert(index, value)

    monkeypatch.setattr(sys, "path", Watched(sys.path))
    assert load_model(ModelConfig(factory=f"{factory}:build")).out_features == 3
    assert inserted == []
    write(tmp_path / "net.py", "from torch import nn\ndef build():\n    return nn.Linear(2, 7)\n")
    os.utime(factory, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert load_model(ModelConfig(factory=f"{factory}:build")).out_features == 7


def test_two_factory_files_with_the_same_name_stay_apart(tmp_path):
    one = write(tmp_path / "a" / "models.py", "from torch import nn\ndef build():\n    return nn.Linear(1, 1)\n")
    two = write(tmp_path / "b" / "models.py", "from torch import nn\ndef build():\n    return nn.Linear(2, 2)\n")
    assert load_model(ModelConfig(factory=f"{one}:build")).in_features == 1
    assert load_model(ModelConfig(factory=f"{two}:build")).in_features == 2


def test_an_importable_module_works_as_factory():
    model = load_model(ModelConfig(factory="torch.nn:Identity"))
    assert isinstance(model, nn.Identity)


# --- a factory that cannot be used ---------------------------------------------------------------------------


def test_a_missing_factory_file_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"model factory file not found: .*nowhere\.py"):
        load_model(ModelConfig(factory=f"{tmp_path / 'nowhere.py'}:build"))


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    broken = write(tmp_path / "broken.py", "from torch import nn\n\ndef build(:\n    pass\n")
    with pytest.raises(ModelError, match=r"broken\.py, line 3: SyntaxError"):
        load_model(ModelConfig(factory=f"{broken}:build"))


def test_an_import_error_inside_the_factory_file_names_the_file_line_and_message(tmp_path):
    broken = write(tmp_path / "broken.py", "import torch\nimport no_such_package_xyz\n")
    with pytest.raises(ModelError) as caught:
        load_model(ModelConfig(factory=f"{broken}:build"))
    message = str(caught.value)
    assert "broken.py" in message and "line 2" in message and "no_such_package_xyz" in message


def test_a_missing_module_is_named():
    with pytest.raises(ModelError, match=r"model factory module 'no_such_package_xyz.models' not found"):
        load_model(ModelConfig(factory="no_such_package_xyz.models:build"))


def test_a_missing_callable_lists_the_callables_and_suggests_the_closest(factory_file):
    with pytest.raises(ModelError) as caught:
        load_model(config(factory_file, name="build_modle"))
    message = str(caught.value)
    assert "models.py has no 'build_modle'" in message
    assert "did you mean 'build_model'?" in message
    assert "TinyNet" in message and "build_ready" in message


def test_a_factory_that_raises_is_reported_with_its_message(factory_file):
    with pytest.raises(ModelError, match=r"build_model_fails raised ValueError: hidden must be even.*models\.py, line"):
        load_model(config(factory_file, name="build_model_fails"))


def test_wrong_kwargs_are_reported_with_the_callables_message(factory_file):
    with pytest.raises(ModelError, match=r"raised TypeError: .*unexpected keyword argument 'depth'"):
        load_model(config(factory_file, depth=3))


def test_a_factory_that_returns_no_module_is_named(factory_file):
    with pytest.raises(ModelError, match=r"build_not_a_model returned builtins\.dict; expected a torch\.nn\.Module"):
        load_model(config(factory_file, name="build_not_a_model"))


# --- weights that cannot be used ------------------------------------------------------------------------------


def test_a_missing_weights_file_is_named(factory_file, tmp_path):
    with pytest.raises(ModelError, match=r"weights file not found: .*absent\.pt"):
        load_model(config(factory_file, weights=tmp_path / "absent.pt"))


def test_a_file_that_is_not_a_torch_file_is_named(factory_file, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"these are not weights")
    with pytest.raises(ModelError, match=r"weights .*junk\.pt are not a readable torch file"):
        load_model(config(factory_file, weights=junk))


def test_a_pickled_whole_model_is_refused_with_the_fix(factory_file, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(load_model(config(factory_file)), whole)
    with pytest.raises(ModelError) as caught:
        load_model(config(factory_file, weights=whole))
    message = str(caught.value)
    assert "whole.pt" in message and "model.state_dict()" in message


def test_a_checkpoint_that_wraps_the_state_dict_is_refused_with_the_fix(factory_file, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": load_model(config(factory_file)).state_dict()}, checkpoint)
    with pytest.raises(ModelError, match=r"checkpoint\.pt are not a state_dict.*'epoch'.*checkpoint\['state_dict'\]"):
        load_model(config(factory_file, weights=checkpoint))


def test_something_other_than_a_mapping_is_not_a_state_dict(factory_file, tmp_path):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ModelError, match=r"tensor\.pt hold a Tensor, not a state_dict"):
        load_model(config(factory_file, weights=tensor))


def test_weights_that_do_not_fit_list_every_missing_unexpected_and_mismatched_key(factory_file, tmp_path):
    state = load_model(config(factory_file, hidden=8)).state_dict()  # wider than the model below
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    misfit = tmp_path / "misfit.pt"
    torch.save(state, misfit)

    with pytest.raises(ModelError) as caught:
        load_model(config(factory_file, weights=misfit, hidden=4))

    message = str(caught.value)
    assert "misfit.pt do not fit" in message
    assert "missing keys (in the model, not in the file): head.bias" in message
    assert "unexpected keys (in the file, not in the model): extra.weight" in message
    assert "conv.weight: file (8, 1, 3, 3) vs model (4, 1, 3, 3)" in message
    assert "bn.running_mean: file (8,) vs model (4,)" in message
    assert "head.weight: file (3, 8) vs model (3, 4)" in message


def test_weights_saved_from_data_parallel_get_a_hint(factory_file, tmp_path):
    state = {f"module.{key}": value for key, value in load_model(config(factory_file)).state_dict().items()}
    wrapped = tmp_path / "parallel.pt"
    torch.save(state, wrapped)
    with pytest.raises(ModelError, match=r"saved from nn\.DataParallel; save model\.module\.state_dict\(\)"):
        load_model(config(factory_file, weights=wrapped))


def test_a_state_dict_without_num_batches_tracked_still_loads(factory_file, tmp_path):
    state = load_model(config(factory_file)).state_dict()
    del state["bn.num_batches_tracked"]  # as saved by old torch versions
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert not load_model(config(factory_file, weights=old)).training


# --- the token -------------------------------------------------------------------------------------------------


def test_model_token_is_stable_and_changes_with_weights_kwargs_callable_and_source(factory_file, tmp_path):
    weights = save_weights(factory_file, tmp_path / "model.pt", seed=0)
    token = model_token(config(factory_file, weights=weights))

    assert model_token(config(factory_file, weights=weights)) == token
    assert model_token(config(factory_file, weights=weights, classes=3)) != token
    assert model_token(config(factory_file, name="build_ready", weights=weights)) != token
    assert model_token(config(factory_file)) != token

    save_weights(factory_file, weights, seed=1)
    retrained = model_token(config(factory_file, weights=weights))
    assert retrained != token

    factory_file.write_text(factory_file.read_text() + "\n# edited\n")
    assert model_token(config(factory_file, weights=weights)) != retrained


def test_model_token_of_a_module_factory_hashes_its_name(tmp_path):
    assert model_token(ModelConfig(factory="torch.nn:Identity")) != model_token(ModelConfig(factory="torch.nn:ReLU"))


def test_model_token_names_missing_files(factory_file, tmp_path):
    with pytest.raises(ModelError, match=r"weights file not found: .*absent\.pt"):
        model_token(config(factory_file, weights=tmp_path / "absent.pt"))
    with pytest.raises(ModelError, match=r"model factory file not found: .*nowhere\.py"):
        model_token(ModelConfig(factory=f"{tmp_path / 'nowhere.py'}:build"))
