"""The model under audit: built from ``model.factory`` and ``model.weights``, and its content token.

``factory`` is ``'path/to/file.py:callable'`` (made absolute when the config is loaded) or
``'package.module:callable'``; the callable is called with ``model.kwargs`` and returns an ``nn.Module``.
``weights`` is a state_dict saved with ``torch.save(model.state_dict(), path)``; it is loaded with
``weights_only=True`` so that a weights file can never run code. Without weights the factory's model is used
as it is (it must then load its own parameters).

A model held in memory (``spray.audit``) is registered by ``in_memory_model`` under the factory
``IN_MEMORY_FACTORY``; its token is ``module_token`` (its classes and state), and loading it returns a copy.

Every failure raises ModelError naming the culprit: the file (and line), the callable, or the keys that do
not fit.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spray.config import ModelConfig
from spray.errors import ModelError

_IMPORT_LOCK = threading.Lock()  # sys.path and sys.modules are process-wide
_FACTORY_MODULES: dict[tuple[str, int, int], types.ModuleType] = {}  # by (path, mtime, size)
_SHOWN = 20  # keys listed per kind of misfit before summarising the rest


def load_model(config: ModelConfig) -> nn.Module:
    """Build the model, load its weights (if given) and return it in eval mode on the CPU."""
    factory = _resolve_factory(config.factory)
    try:
        model = factory(**config.kwargs)
    except Exception as error:  # the user's code: any exception is reported with its message
        raise ModelError(
            f"model factory {config.factory} raised {type(error).__name__}: {error}"
            f"{_user_frame(error, _factory_source(config.factory))}"
        ) from error
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {config.factory} returned {type(model).__module__}.{type(model).__qualname__}; "
            "expected a torch.nn.Module"
        )
    model = model.cpu()
    weights = _single_weights(config)
    if weights is not None:
        state = _read_state_dict(weights)
        _check_fit(model, state, weights, config.factory)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:  # a misfit _check_fit does not model (e.g. a custom _load_from_state_dict)
            raise ModelError(f"weights {config.weights} do not fit the model from {config.factory}: {error}") from None
    return model.eval()


def model_token(config: ModelConfig) -> str:
    """Content hash of what determines the model: factory source, callable name, kwargs and weight bytes.

    For a ``.py`` factory the file's bytes are hashed (modules it imports are not); for a module the
    module name and, where it can be found, its file's bytes. Raises ModelError if a file is missing.
    An in-memory model (``in_memory_model``) has the token of its module (``module_token``).
    """
    if config.factory == IN_MEMORY_FACTORY:
        return str(config.kwargs["token"])
    source, _, name = config.factory.rpartition(":")
    digest = hashlib.blake2b(digest_size=16)
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ModelError(f"model factory file not found: {path} (from model.factory {config.factory!r})")
        digest.update(b"file\0" + _file_digest(path).encode())
    else:
        digest.update(b"module\0" + source.encode())
        origin = _module_origin(source)
        if origin is not None:
            digest.update(b"\0" + _file_digest(origin).encode())
    digest.update(b"\0callable\0" + name.encode())
    # default=repr: a kwarg that JSON cannot hold still contributes its value
    digest.update(b"\0kwargs\0" + json.dumps(config.kwargs, sort_keys=True, default=repr).encode())
    weights = _single_weights(config)
    if weights is None:
        digest.update(b"\0weights\0none")
    else:
        if not weights.is_file():
            raise ModelError(f"weights file not found: {weights} (from model.weights)")
        digest.update(b"\0weights\0" + _file_digest(weights).encode())
    return digest.hexdigest()


def checkpoint_configs(config: ModelConfig) -> list[ModelConfig]:
    """One ModelConfig per checkpoint of a series (``model.weights`` a list, in its order); ``[config]``
    for a single weights file or none."""
    if not isinstance(config.weights, list):
        return [config]
    return [config.model_copy(update={"weights": path}) for path in config.weights]


def _single_weights(config: ModelConfig) -> Path | None:
    """The one weights file of ``config``; a series must be split by ``checkpoint_configs`` first."""
    if isinstance(config.weights, list):
        raise ValueError("model.weights names a series of checkpoints: load each of checkpoint_configs(config)")
    return None if config.weights is None else Path(config.weights)


# --- the factory -------------------------------------------------------------------------------------------


def _resolve_factory(spec: str) -> Callable[..., Any]:
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ModelError(f"model.factory {spec!r}: expected 'models.py:build_model' or 'package.module:build_model'")
    module = _import_file(Path(source), spec) if source.endswith(".py") else _import_module(source, spec)
    if not hasattr(module, name):
        available = _callables(module)
        close = difflib.get_close_matches(name, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = _keys(available)
        raise ModelError(
            f"model factory {spec}: {_module_label(module)} has no {name!r}{hint} "
            f"(callables there: {listed or 'none'})"
        )
    factory = getattr(module, name)
    if not callable(factory):
        raise ModelError(
            f"model factory {spec}: {name!r} in {_module_label(module)} is a {type(factory).__name__}, "
            "expected a function or class returning an nn.Module"
        )
    return factory


def _import_file(path: Path, spec: str) -> types.ModuleType:
    """The factory file's module, executed once per process and version of the file.

    Importing puts the file's folder on ``sys.path`` for a moment; doing that from a task thread while
    another thread imports a package can make that import miss site-packages (the path finder walks the
    list being shifted under it), so later loads of an unchanged file reuse the module instead.
    """
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"model factory file not found: {path} (from model.factory {spec!r})")
    stat = path.stat()
    version = (str(path), stat.st_mtime_ns, stat.st_size)
    with _IMPORT_LOCK:
        module = _FACTORY_MODULES.get(version)
        if module is None:
            module = _execute_file(path)
            _FACTORY_MODULES[version] = module
    return module


def _execute_file(path: Path) -> types.ModuleType:
    # A name unique to the file keeps two factories called models.py apart and is stable across calls,
    # so re-loading the same file replaces its module instead of piling up copies.
    key = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    module_name = f"spray_factory_{stem}_{key}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelError(f"model factory file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.parent)
    # the file's folder goes first on sys.path while importing, so `from layers import Block` next to
    # models.py works as it does when the user runs models.py themselves
    sys.path.insert(0, folder)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up while it executes
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        sys.modules.pop(module_name, None)
        where = f"{error.filename or path}, line {error.lineno}"
        raise ModelError(f"model factory file {where}: SyntaxError: {error.msg}") from None
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ModelError(
            f"model factory file {path} failed to import: {type(error).__name__}: {error}"
            f"{_user_frame(error, path)}"
        ) from error
    finally:
        try:
            sys.path.remove(folder)  # the first occurrence: the one inserted above
        except ValueError:
            pass  # the imported code removed it itself
    return module


def _import_module(name: str, spec: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        # only a missing factory module (or a parent package) is "not found"; a module missing inside it
        # is an import error of the user's code
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise ModelError(
                f"model factory module {name!r} not found (from model.factory {spec!r}); expected an importable "
                "module (installed or on PYTHONPATH) or a path ending in .py"
            ) from None
        raise ModelError(
            f"model factory module {name!r} failed to import: {type(error).__name__}: {error}"
            f"{_user_frame(error, None)}"
        ) from error
    except SyntaxError as error:
        raise ModelError(
            f"model factory module {name!r}: {error.filename}, line {error.lineno}: SyntaxError: {error.msg}"
        ) from None
    except Exception as error:
        raise ModelError(
            f"model factory module {name!r} failed to import: {type(error).__name__}: {error}"
            f"{_user_frame(error, None)}"
        ) from error


def _module_origin(name: str) -> Path | None:
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return None
    return Path(found.origin)


def _callables(module: types.ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and callable(value) and not isinstance(value, types.ModuleType)
    )


def _module_label(module: types.ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return str(file) if file else f"module {module.__name__!r}"


def _factory_source(spec: str) -> Path | None:
    source = spec.rpartition(":")[0]
    return Path(source).resolve() if source.endswith(".py") else None


def _user_frame(error: BaseException, path: Path | None) -> str:
    """' (at FILE, line N)' for the deepest frame of the user's code in the traceback, or ''."""
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(error.__traceback__))
    if path is not None:
        # the factory's folder counts as the user's code: a sibling module it imports may be the culprit
        folder = str(path.parent) + os.sep
        frames = [frame for frame in frames if frame.filename.startswith(folder)]
    else:
        frames = [frame for frame in frames if not _is_library(frame.filename)]
    if not frames:
        return ""
    return f" (at {frames[-1].filename}, line {frames[-1].lineno})"


def _is_library(filename: str) -> bool:
    # importlib's machinery and this module are never the culprit
    return filename.startswith("<") or "importlib" in filename or filename == __file__


# --- the weights -------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ModelError(f"weights file not found: {path} (from model.weights)")
    if not path.is_file():
        raise ModelError(f"weights {path} is not a file; expected a state_dict saved with torch.save")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for foreign files
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            # torch's message runs to a paragraph on allow-listing; the offending class is what matters
            first = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "")
            first = first.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            detail = f" ({first})" if first else ""
            raise ModelError(
                f"weights {path} contain pickled Python objects, not only tensors (a whole pickled model?)"
                f"{detail}; save the parameters instead: torch.save(model.state_dict(), path)"
            ) from None
        raise ModelError(
            f"weights {path} are not a readable torch file "
            f"({type(error).__name__}: {text.splitlines()[0] if text else ''}); "
            "expected a state_dict saved with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(loaded, nn.Module):  # only reachable with a torch that allows modules under weights_only
        raise ModelError(f"weights {path} hold a whole model; save model.state_dict() instead")
    if not isinstance(loaded, Mapping):
        raise ModelError(
            f"weights {path} hold a {type(loaded).__name__}, not a state_dict; "
            "expected a mapping of parameter names to tensors saved with torch.save(model.state_dict(), path)"
        )
    not_tensors = [str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        wrapped = [key for key in ("state_dict", "model_state_dict", "model") if isinstance(loaded.get(key), Mapping)]
        hint = (
            f"; it looks like a training checkpoint: save checkpoint[{wrapped[0]!r}] on its own"
            if wrapped
            else "; save torch.save(model.state_dict(), path)"
        )
        raise ModelError(
            f"weights {path} are not a state_dict: the entries {', '.join(map(repr, not_tensors[:_SHOWN]))} "
            f"are not tensors{hint}"
        )
    return dict(loaded)


def _check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, factory: str) -> None:
    """Raise ModelError listing every missing key, unexpected key and shape mismatch at once."""
    expected = model.state_dict()
    # BatchNorm fills in a missing num_batches_tracked itself (state_dicts from old torch versions lack it)
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing keys (in the model, not in the file): {_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys (in the file, not in the model): {_keys(unexpected)}")
    if mismatched:
        more = len(mismatched) - _SHOWN
        lines = mismatched[:_SHOWN] + ([f"and {more} more"] if more > 0 else [])
        parts.append("shape mismatches:" + "".join(f"\n      {line}" for line in lines))
    hint = ""
    if unexpected and all(key.startswith("module.") for key in state):
        hint = (
            " (the file's keys start with 'module.': it was saved from nn.DataParallel; "
            "save model.module.state_dict())"
        )
    raise ModelError(
        f"weights {path} do not fit the model from {factory}{hint}:\n" + "\n".join(f"  - {part}" for part in parts)
    )


def _keys(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise ModelError(f"cannot read {path}: {error.strerror}") from None
    return digest.hexdigest()


# --- a model held in memory (spray.audit) ------------------------------------------------------------------

# The factory of a model handed to spray.audit as an nn.Module; its kwargs are {"token": module_token(...),
# "name": the class's qualified name}.
IN_MEMORY_FACTORY = "spray.model:held_model"
_HELD_MODELS: dict[str, tuple[nn.Module, int]] = {}  # token -> (module, number of holders)
_HELD_LOCK = threading.Lock()


def module_token(module: nn.Module) -> str:
    """Content hash of an in-memory model: the qualified names of its module classes, their source code
    where Python can find it, and every tensor of its ``state_dict`` (name, dtype, shape, bytes).

    A class whose source Python cannot find (defined in an interpreter session without it) contributes only
    its name: a changed ``forward`` under the same name and state is then not seen.
    """
    digest = hashlib.blake2b(digest_size=16)
    for cls in dict.fromkeys(type(child) for child in module.modules()):
        digest.update(f"class\0{cls.__module__}.{cls.__qualname__}\0".encode())
        if not cls.__module__.startswith("torch."):
            try:
                digest.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):
                pass
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"\0tensor\0{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


@contextlib.contextmanager
def in_memory_model(module: nn.Module) -> Iterator[ModelConfig]:
    """Make ``module`` loadable by the stages while the block runs, in this process; yields its
    ModelConfig (``IN_MEMORY_FACTORY``). ``load_model`` returns a copy of it, so the caller's module is
    neither moved nor switched to eval mode."""
    token = module_token(module)
    with _HELD_LOCK:
        held = _HELD_MODELS.get(token)
        _HELD_MODELS[token] = (module if held is None else held[0], 1 if held is None else held[1] + 1)
    try:
        yield ModelConfig(factory=IN_MEMORY_FACTORY,
                          kwargs={"token": token, "name": f"{type(module).__module__}.{type(module).__qualname__}"})
    finally:
        with _HELD_LOCK:
            module, holders = _HELD_MODELS[token]
            if holders > 1:
                _HELD_MODELS[token] = (module, holders - 1)
            else:
                del _HELD_MODELS[token]


def held_model(token: str, name: str) -> nn.Module:
    """The factory of ``IN_MEMORY_FACTORY``: a copy of the in-memory model with content token ``token``."""
    with _HELD_LOCK:
        held = _HELD_MODELS.get(token)
    if held is None:
        raise ModelError(f"the in-memory model {name} is not in this process: spray.audit hands an nn.Module to "
                         "tasks in its own process only (dask.scheduler threads or synchronous)")
    return copy.deepcopy(held[0])
