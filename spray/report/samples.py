"""``samples.csv``: one row per audited sample, for analyses of an audit in pandas or a spreadsheet.

Columns: ``id, class, label, prediction, logit, cluster, flagged, conservation, aopc_morf, aopc_random,
aopc_gain`` (region perturbation in logits, empty where the sample was not sampled) and, for every embedding
present in any class, ``<name>_x, <name>_y`` (``tsne_x, tsne_y, umap_x, umap_y``; empty where a class has
no such embedding). ``logit`` is the audited class's logit; ``flagged`` says whether the sample's cluster is
flagged. Read ids with ``pd.read_csv(path, dtype={"id": str})`` so that ids such as ``007`` keep their zeros. An id
that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage return, and is not a
number) is written with a leading ``'`` (``spreadsheet_safe``); summary.json keeps every id as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spray.report._io import atomic_text_writer
from spray.results import ClassResult

BASE_COLUMNS = ["id", "class", "label", "prediction", "logit", "cluster", "flagged", "conservation", "aopc_morf",
                "aopc_random", "aopc_gain"]


def check_aligned(result: ClassResult) -> None:
    """Raise ValueError when a per-sample array of ``result`` does not have one entry per sample id.

    A misaligned array would silently attach numbers to the wrong samples in the CSV and the figures.
    """
    expected = result.n_samples
    arrays = {
        "labels": result.labels,
        "predictions": result.predictions,
        "logits": result.logits,
        "conservation": result.conservation,
        "cluster_labels": result.cluster_labels,
    }
    arrays.update({f"embeddings[{name!r}]": coords for name, coords in result.embeddings.items()})
    if result.faithfulness is not None:
        arrays["faithfulness.aopc_gain"] = result.faithfulness.aopc_gain
    for name, values in arrays.items():
        length = len(np.asarray(values))
        if length != expected:
            raise ValueError(
                f"class {result.class_index} ({result.class_name!r}): {name} has {length} entries, "
                f"expected one per sample id ({expected})"
            )
    for name, coords in result.embeddings.items():
        shape = np.asarray(coords).shape
        if len(shape) != 2 or shape[1] != 2:
            raise ValueError(
                f"class {result.class_index} ({result.class_name!r}): embedding {name!r} has shape {shape}, "
                f"expected ({expected}, 2)"
            )


def embedding_names(classes: list[ClassResult]) -> list[str]:
    """Every embedding name present in any class, t-SNE and UMAP first, in a stable order."""
    names = {str(name) for result in classes for name in result.embeddings}
    preferred = [name for name in ("tsne", "umap") if name in names]
    return preferred + sorted(names - set(preferred))


# A cell starting with one of these is run as a formula by spreadsheet programs (CSV injection, OWASP).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it as a formula (it starts with = + - @, a
    tab or a carriage return), as OWASP advises; spreadsheets show the text without the quote. Numbers
    such as ``-1`` are left alone: they are not formulas."""
    if text.startswith(_FORMULA_STARTS):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def _columns(classes: list[ClassResult]) -> tuple[list[str], list[str]]:
    names = embedding_names(classes)
    return names, BASE_COLUMNS + [f"{name}_{axis}" for name in names for axis in ("x", "y")]


def _class_frame(result: ClassResult, names: list[str], columns: list[str]) -> pd.DataFrame:
    check_aligned(result)
    cluster_labels = np.asarray(result.cluster_labels, dtype=np.int64)
    flagged_ids = {int(cluster.id) for cluster in result.clusters if cluster.flagged}
    data: dict[str, object] = {
        "id": [spreadsheet_safe(str(sample_id)) for sample_id in result.ids],
        "class": np.full(result.n_samples, int(result.class_index), dtype=np.int64),
        "label": np.asarray(result.labels, dtype=np.int64),
        "prediction": np.asarray(result.predictions, dtype=np.int64),
        "logit": np.asarray(result.logits, dtype=np.float64),
        "cluster": cluster_labels,
        "flagged": np.isin(cluster_labels, sorted(flagged_ids)),
        "conservation": np.asarray(result.conservation, dtype=np.float64),
    }
    faithfulness = result.faithfulness
    for key in ("aopc_morf", "aopc_random", "aopc_gain"):
        data[key] = (np.asarray(getattr(faithfulness, key), dtype=np.float64) if faithfulness is not None
                     else np.full(result.n_samples, np.nan))
    for name in names:
        coords = result.embeddings.get(name)
        for axis, column in (("x", 0), ("y", 1)):
            data[f"{name}_{axis}"] = (
                np.asarray(coords, dtype=np.float64)[:, column]
                if coords is not None
                else np.full(result.n_samples, np.nan)
            )
    return pd.DataFrame(data, columns=columns)


def samples_frame(classes: list[ClassResult]) -> pd.DataFrame:
    """The rows of samples.csv as a DataFrame (also empty, with its columns, when no class was audited)."""
    names, columns = _columns(classes)
    frames = [_class_frame(result, names, columns) for result in classes]
    if not frames:
        return pd.DataFrame({column: [] for column in columns}, columns=columns)
    return pd.concat(frames, ignore_index=True)


def samples_csv(classes: list[ClassResult]) -> str:
    """samples.csv as text (full float precision; missing values as empty fields)."""
    return samples_frame(classes).to_csv(index=False, lineterminator="\n")


def write_samples_csv(path: Path, classes: list[ClassResult]) -> Path:
    """Write samples.csv (the text of ``samples_csv``) atomically, class by class: a million-sample audit
    does not build its whole table, nor its text, in memory.

    Raises ValueError, before anything is written, when a class's per-sample arrays are misaligned.
    """
    for result in classes:
        check_aligned(result)
    names, columns = _columns(classes)
    with atomic_text_writer(path) as text:
        pd.DataFrame({column: [] for column in columns}, columns=columns).to_csv(
            text, index=False, lineterminator="\n")
        for result in classes:
            _class_frame(result, names, columns).to_csv(text, index=False, header=False, lineterminator="\n")
    return Path(path)
