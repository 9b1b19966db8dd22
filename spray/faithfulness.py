"""The evaluate stage's cached task: how faithful a class's heatmaps are, by region perturbation.

On ``evaluation.samples`` explained samples of the class (drawn with ``evaluation.seed``), the square patches
of ``evaluation.patch_size`` pixels are destroyed most relevant first (MoRF, by the sample's channel-summed
input relevance from its attribution shard) and in a random order, and the model's logit of the class is read
after each step (``spray.evaluate``). Interventions are made in pixel space, then normalised with the
config's mean and std, as everywhere in spray.

An entry holds, per sampled sample (meta ``ids``, in the class's shard order): ``morf`` and ``random``
``(n, L + 1)`` logits after ``0..L`` destroyed patches, and ``aopc_morf``, ``aopc_random``, ``aopc_gain``
``(n,)`` in logits; meta ``patch_size``, ``steps`` (``L``, capped at the patches) and ``perturbation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spray.attribute import resolve_device
from spray.cache import Entry, cached, entry_key
from spray.config import EvaluationConfig, ImageConfig, ModelConfig
from spray.data import Sample, load_pixels
from spray.errors import RunError
from spray.evaluate import RegionPerturbation, class_score, faithfulness, patch_grid
from spray.model import load_model

STORE_VERSION = 1
"""Revision of what an evaluate entry stores; bump it when that changes within a release."""


@dataclass(frozen=True)
class EvaluateTask:
    """Everything the evaluate task of one class needs besides its attribution shards."""

    class_index: int
    model: ModelConfig
    image: ImageConfig
    evaluation: EvaluationConfig
    device: str  # as in attribution.device
    batch_size: int  # perturbed images per forward pass
    shards: tuple[tuple[Sample, ...], ...]  # the samples of each attribution shard, in shard order


@dataclass(frozen=True)
class Evaluated:
    """An evaluate entry read back (see the module docstring)."""

    ids: list[str]
    morf: np.ndarray  # (n, L + 1) logits
    random: np.ndarray  # (n, L + 1) logits
    aopc_morf: np.ndarray  # (n,) logits
    aopc_random: np.ndarray  # (n,)
    aopc_gain: np.ndarray  # (n,)
    patch_size: int
    steps: int
    perturbation: str


def store_key(evaluation: EvaluationConfig, image: ImageConfig, shard_keys: list[str], model_token: str) -> str:
    """The cache key of a class's evaluate entry: the evaluation section, the image section, the model's
    content token and the attribution shards' keys (the relevance that orders the patches)."""
    return entry_key("evaluate", STORE_VERSION, evaluation, image, model_token, shard_keys)


def evaluate_task(directory: str, key: str, shards: list[Entry], task: EvaluateTask) -> Entry:
    """The class's evaluate entry under ``directory``: found by ``key``, or computed and stored."""
    return cached(directory, "evaluate", key, _evaluate, shards, task)


def read_evaluated(entry: Entry) -> Evaluated:
    """Read an evaluate entry back."""
    arrays, meta = entry.read()
    return Evaluated(ids=[str(i) for i in meta["ids"]], morf=arrays["morf"], random=arrays["random"],
                     aopc_morf=arrays["aopc_morf"], aopc_random=arrays["aopc_random"],
                     aopc_gain=arrays["aopc_gain"], patch_size=int(meta["patch_size"]), steps=int(meta["steps"]),
                     perturbation=str(meta["perturbation"]))


def sampled_rows(explained: int, wanted: int, seed: int) -> np.ndarray:
    """Sorted positions of ``min(wanted, explained)`` samples among ``explained``, drawn without replacement."""
    count = min(int(wanted), int(explained))
    return np.sort(np.random.default_rng(seed).choice(explained, size=count, replace=False)).astype(np.int64)


def _explained(shards: list[Entry], task: EvaluateTask) -> list[tuple[Sample, int, int]]:
    """(sample, shard number, row in the shard's relevance) of every explained sample, in shard order."""
    rows = []
    for number, (entry, samples) in enumerate(zip(shards, task.shards)):
        arrays, _ = entry.read()
        rows += [(samples[int(position)], number, row) for row, position in enumerate(arrays["index"])]
    return rows


def _evaluate(shards: list[Entry], task: EvaluateTask) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    explained = _explained(shards, task)
    chosen = [explained[i] for i in sampled_rows(len(explained), task.evaluation.samples, task.evaluation.seed)]
    params = RegionPerturbation(patch_size=task.evaluation.patch_size, steps=task.evaluation.steps,
                                perturbation=task.evaluation.perturbation, seed=task.evaluation.seed)
    steps = min(params.steps, int(patch_grid(*task.image.size, params.patch_size).max()) + 1)
    meta: dict[str, Any] = {"ids": [sample.id for sample, _, _ in chosen], "patch_size": params.patch_size,
                            "steps": steps, "perturbation": params.perturbation}
    if not chosen:
        empty = np.zeros((0, steps + 1))
        return {"morf": empty, "random": empty, "aopc_morf": np.zeros(0), "aopc_random": np.zeros(0),
                "aopc_gain": np.zeros(0)}, meta
    pixels, _, failed = load_pixels([sample for sample, _, _ in chosen], task.image)
    if failed:
        sample_id, reason = failed[0]
        raise RunError(f"class {task.class_index}: sample {sample_id} can no longer be read ({reason}); "
                       "the images changed while auditing: re-run")
    relevance = _relevance(shards, chosen)
    device = resolve_device(task.device)
    model = load_model(task.model).to(device)
    score = class_score(model, np.full(len(chosen), task.class_index), _normaliser(task.image, device))
    result = faithfulness(score, np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), relevance, params,
                          batch_size=task.batch_size)
    return {"morf": result.morf, "random": result.random, "aopc_morf": result.aopc_morf,
            "aopc_random": result.aopc_random, "aopc_gain": result.aopc_gain}, meta


def _relevance(shards: list[Entry], chosen: list[tuple[Sample, int, int]]) -> np.ndarray:
    """(n, H, W) channel-summed input relevance of the chosen samples, one chunk read each."""
    opened: dict[int, Any] = {}
    maps = []
    for _, number, row in chosen:
        if number not in opened:
            opened[number] = shards[number].open_array("relevance")
        maps.append(np.asarray(opened[number][row : row + 1])[0].sum(0))
    return np.stack(maps).astype(np.float32)


def _normaliser(image: ImageConfig, device: torch.device) -> Any:
    """Pixels ``(B, C, H, W)`` in [0, 1] -> the model's input, as ``spray.data.to_model_input`` does."""
    mean = torch.tensor(image.per_channel("mean"), dtype=torch.float32, device=device)[None, :, None, None]
    std = torch.tensor(image.per_channel("std"), dtype=torch.float32, device=device)[None, :, None, None]

    def to_input(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) / std

    return to_input
