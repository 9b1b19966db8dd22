"""Does NEON localise a planted artifact, and better than the flag region?

On planted cases whose artifact pixels are known per image, for every flagged cluster of a planted class,
over its members that carry the artifact (the measures are per member at image resolution, then the median
over those members):

- ``neon``: the share of the member's positive NEON membership relevance (``spray.neon.cluster_memberships``
  over the preprocessed maps and the final labels, with ``flagging.min_cluster_size`` as the smallest
  competitor, as the audit computes it; each map cell spread evenly over the image pixels it was
  area-averaged from) on the artifact's pixels, and within 2 px of them (``+2px``, city-block distance);
  ``neon present``: the same share of the part of the membership map from what the member has (cells where
  its heatmap exceeds the boundary point to a competitor: ``spray.neon``, what the report shows), ``neon
  absent``: the share of the member's positive relevance from what it lacks instead;
- ``lrp``: the same share of the member's own LRP heatmap (channel-summed, image resolution), the reference:
  how much of the model's own evidence is on the artifact;
- ``neon mean``, ``lrp mean``: the same shares of the cluster's mean membership map and mean heatmap (what the
  report shows), where the carriers share one artifact place (NaN for a pattern that moves);
- ``region``: the cluster's distinctive region as the flag entry stores it (what the report outlines and
  summary.json's ``positive_share_in_region`` is measured in), up-sampled as ``spray.flag.plan`` does:
  precision (share of its pixels on the artifact), recall (share of the artifact's pixels it covers), IoU;
- ``window``: the same for each member's window of its finding (image pixels: the grown region's box, or
  where a pattern that moves was matched in that member);
- ``neon region``: what a region taken from NEON would be under the flag region's rule (the smallest set of
  cells holding ``REGION_MASS`` of the positive values, at most ``flagging.region_fraction`` of the map), from
  the cluster's mean membership map (``mean``) and from each member's own membership map (``own``).

Cases: the demo (``spray.demo``, its watermark; class 3 audited alone) and cases of
``benchmarks/shortcut_kinds.py`` (its ``cases(seed)``, by number; each target class audited alone): the
artifact masks are read from ``artifact_masks.npz`` of a built case, or, for a case built before it was
written, drawn again from the case's seed (``spray.planted.plant_case``), checked against the stored images.

    python benchmarks/neon_localisation.py [--demo pipelines/demo-case] [--cases 0,3,4,9,12,13]
        [--kept FOLDER] [--lens] [--min-competitor-size N] [--json out.json]

``--lens``: each case also with the deep-feature lens at its last convolution block (``LENS_LAYERS``).

``--kept``: a folder of cases kept by ``shortcut_kinds.py --keep`` (``NN-name/case``, ``NN-name/cache``); they
are read, never written (their caches are copied into a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shortcut_kinds import cases as shortcut_cases  # noqa: E402

from spray.analysis.features import lens_neon  # noqa: E402
from spray.assemble import RelevanceLookup, relevance_lookup  # noqa: E402
from spray.config import SprayConfig, config_from_dict  # noqa: E402
from spray.data import load_dataset  # noqa: E402
from spray.demo import DemoConfig, artifact_mask  # noqa: E402
from spray.demo import build_case as build_demo  # noqa: E402
from spray.flag import read_flagged  # noqa: E402
from spray.flag.plan import REGION_MASS, to_image_mask  # noqa: E402
from spray.model import model_token  # noqa: E402
from spray.neon import cluster_memberships  # noqa: E402
from spray.pipeline import compute_entries  # noqa: E402
from spray.planted import ARTIFACT_MASKS, Case, build_case, is_built, plant_case, read_artifact_masks  # noqa: E402

# the last convolution block's output of each kind of model: where the lens's explanation landed on the
# artifact in docs/method.md's measurements (a dense layer after the ReLU mixes in the digit's shape)
LENS_LAYERS = {"demo cnn": "8", "cnn": "8", "resnet": "4.relu2"}
DILATION = 2  # px: the artifact's pixels and those within this many steps (4-connected: city-block distance)


@dataclass(frozen=True)
class Audited:
    """A case ready to measure: its config (the class(es) to audit), and per manifest path the artifact's
    number (0: none) and its (H, W) bool mask."""

    name: str
    model: str
    config: SprayConfig
    targets: dict[int, int]  # target class -> artifact number
    fractions: dict[int, float]  # target class -> planted share
    artifact: dict[str, int]
    masks: dict[str, np.ndarray]
    lens: str | None = None  # the deep-feature lens's layer; None: NEON over the heatmaps

    def with_lens(self, layer: str, work: Path) -> Audited:
        """The same case audited with the deep-feature lens at ``layer`` (its own cache folder ``work``)."""
        config = self.config.model_copy(update={
            "analysis": self.config.analysis.model_copy(update={"space": "features", "layer": layer}),
            "cache": self.config.cache.model_copy(update={"directory": work / "cache"})})
        if (Path(self.config.cache.directory)).is_dir() and not (work / "cache").exists():
            shutil.copytree(self.config.cache.directory, work / "cache")  # the attributions are the same
        return replace(self, name=f"{self.name} (lens {layer})", config=config, lens=layer)


# ------------------------------------------------------------------------------------------------------
# the cases


def demo_case(folder: Path, work: Path) -> Audited:
    """The demo (pipelines/demo.yaml's case), built into ``folder`` unless it is there; class 3 audited."""
    folder = folder.resolve()
    demo = DemoConfig(directory=folder)
    build_demo(demo)
    manifest = pd.read_csv(folder / "images" / "manifest.csv")
    mask = artifact_mask(demo.artifact, demo.position)
    raw = {"model": {"factory": "spray.demo:build_model", "kwargs": {"batchnorm": demo.batchnorm},
                     "weights": str(folder / "model.pt")},
           "data": {"manifest": str(folder / "images" / "manifest.csv"),
                    "image": {"mode": "L", "size": [32, 32], "mean": [0.0], "std": [1.0]}},
           "audit": {"classes": [demo.target_class]},
           "attribution": {"composite": "epsilon_plus_flat", "batch_size": 128},
           "embedding": {"methods": []}, "cache": {"directory": str(work / "cache")}, "output": str(work / "report")}
    masks = {path: mask if planted else np.zeros_like(mask) for path, planted in zip(manifest.path, manifest.artifact)}
    return Audited("demo watermark", "demo cnn", config_from_dict(raw, base_dir=work), {demo.target_class: 1},
                   {demo.target_class: demo.fraction}, dict(zip(manifest.path, manifest.artifact.astype(int))), masks)


def planted_case(name: str, case: Case, kept: Path | None, work: Path) -> Audited:
    """A shortcut_kinds case: the kept one (its cache copied into ``work``) or built into ``work``."""
    folder = work / "case"
    if kept is not None and is_built(kept / "case", case):
        folder = kept / "case"
        if (kept / "cache").is_dir():
            shutil.copytree(kept / "cache", work / "cache")
    elif not is_built(folder, case):
        build_case(folder, case)
    manifest = pd.read_csv(folder / "images" / "manifest.csv")
    if (folder / ARTIFACT_MASKS).exists():
        stored = read_artifact_masks(folder, case.size)
    else:
        stored = _drawn_again(folder, case, manifest)
    targets = {a.target_class: number for number, a in enumerate(case.artifacts, start=1)}
    raw = {"model": {"factory": "spray.planted:build_model",
                     "kwargs": {"kind": case.model, "channels": case.channels, "n_classes": case.n_classes},
                     "weights": str(folder / "model.pt")},
           "data": {"manifest": str(folder / "images" / "manifest.csv"),
                    "image": {"mode": "RGB" if case.channels == 3 else "L", "size": [case.size, case.size]}},
           "audit": {"classes": sorted(targets)},
           "attribution": {"batch_size": 128}, "embedding": {"methods": []},
           "flagging": {"transplant_images": 100},
           "cache": {"directory": str(work / "cache")}, "output": str(work / "report")}
    return Audited(name, case.model, config_from_dict(raw, base_dir=work), targets,
                   {a.target_class: a.fraction for a in case.artifacts},
                   dict(zip(manifest.path, manifest.artifact.astype(int))), dict(zip(manifest.path, stored)))




def _drawn_again(folder: Path, case: Case, manifest: pd.DataFrame) -> np.ndarray:
    """The masks of a case built without ``artifact_masks.npz``: its images drawn again from its seed, which
    must equal the stored planted images (they do not when the bundled photos differ: scikit-image)."""
    drawn = plant_case(case, np.random.default_rng(case.seed))
    for row in np.flatnonzero(drawn.planted):
        stored = np.asarray(Image.open(folder / "images" / manifest.path[row]), np.uint8)
        mine = (drawn.images[row] * 255).round().astype(np.uint8)
        if not np.array_equal(stored, mine if case.channels == 3 else mine[..., 0]):
            raise SystemExit(f"{folder}: image {manifest.path[row]} differs from the one drawn again from seed "
                             f"{case.seed}; were the bundled photos different (pip install 'spray[photos]')?")
    return drawn.masks


# ------------------------------------------------------------------------------------------------------
# the measures


def positive_share(values: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive part of ``values (H, W)`` on ``mask``; NaN without positive values."""
    positive = np.clip(values, 0, None)
    total = float(positive.sum())
    return float(positive[mask].sum() / total) if total > 0 else float("nan")


def overlap(region: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, IoU) of bool ``region`` against bool ``mask``, both (H, W)."""
    both = float((region & mask).sum())
    return (both / max(region.sum(), 1), both / max(mask.sum(), 1), both / max((region | mask).sum(), 1))


def mass_region(values: np.ndarray, max_fraction: float) -> np.ndarray:
    """The flag region's rule on any map: the fewest cells holding ``REGION_MASS`` of its positive part, at
    most ``max_fraction`` of them and at least one. (h, w) -> (h, w) bool."""
    positive = np.clip(values, 0, None).ravel()
    order = np.argsort(-positive, kind="stable")
    total = positive.sum()
    count = int(np.searchsorted(np.cumsum(positive[order]) / total, REGION_MASS)) + 1 if total > 0 else 1
    region = np.zeros(positive.size, bool)
    region[order[: max(1, min(count, int(max_fraction * positive.size)))]] = True
    return region.reshape(values.shape)


def upsampled(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map of area-averaged cells at image resolution (H, W): each cell's value spread evenly over
    its pixels (so a share of relevance is the same at both resolutions)."""
    factor = (size[0] // cells.shape[0], size[1] // cells.shape[1])
    if factor[0] * cells.shape[0] != size[0] or factor[1] * cells.shape[1] != size[1]:
        raise ValueError(f"maps of {cells.shape} do not tile images of {size}")
    return np.kron(cells, np.ones(factor)) / (factor[0] * factor[1])


def measure(audited: Audited, min_competitor_size: int | None = None) -> list[dict]:
    """One row per flagged cluster of each target class (a row with ``flagged`` 0 when none was flagged).
    ``min_competitor_size``: NEON's (default: ``flagging.min_cluster_size``, as the audit passes it)."""
    config = audited.config
    competitor_size = min_competitor_size or config.flagging.min_cluster_size
    dataset = load_dataset(config.data)
    classes = sorted(audited.targets)
    directory = Path(config.cache.directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries, _ = compute_entries(config, dataset, classes, directory, model_token(config.model), False, False)
    size = (int(config.data.image.size[0]), int(config.data.image.size[1]))
    rows = []
    for index in classes:
        tasks = entries[index]
        arrays, meta = tasks["preprocess"].read()
        ids, maps = list(meta["ids"]), arrays["maps"]
        flagged = read_flagged(tasks["flag"])
        if "lens" in tasks:  # NEON at the layer, propagated to the input by LRP (spray.analysis.features)
            _, own_maps = lens_neon(tasks["lens"], flagged.labels)
            present = absent = None
        else:
            _, own_maps, present = cluster_memberships(maps, flagged.labels, min_competitor_size=competitor_size)
            absent = own_maps - present
        lookup = relevance_lookup(tasks["shards"], dataset.by_class()[index], config.attribution.shard_size)
        number = audited.targets[index]
        carriers = np.array([audited.artifact[i] == number for i in ids])
        base = {"case": audited.name, "model": audited.model, "lens": audited.lens, "class": index,
                "planted": audited.fractions[index], "carriers": int(carriers.sum())}
        found = [c for c in flagged.clusters if c.flagged]
        if not found:
            rows.append({**base, "flagged": 0})
        for cluster in found:
            members = flagged.labels == cluster.id
            finding = next((f for f in flagged.findings if f.cluster == cluster.id), None)
            rows.append({**base, "flagged": len(found), "cluster": cluster.id, "members": int(members.sum()),
                         "precision_members": round(float(carriers[members].mean()), 3),
                         **_cluster_measures(audited, ids, members, carriers, (own_maps, present, absent), cluster.region,
                                             finding.windows if finding is not None else None, lookup, size,
                                             config.flagging.region_fraction)})
    return rows


def _cluster_measures(audited: Audited, ids: list[str], members: np.ndarray, carriers: np.ndarray,
                      neon_maps: tuple[np.ndarray, np.ndarray | None, np.ndarray | None],
                      region: np.ndarray | None, windows: np.ndarray | None, lookup: RelevanceLookup,
                      size: tuple[int, int], max_fraction: float) -> dict[str, float]:
    """The medians over the cluster's members that carry the artifact (see the module docstring)."""
    own_maps, present, absent = neon_maps
    member_rows = np.flatnonzero(members)
    boxes = _member_windows(windows, len(member_rows))
    mean_region = to_image_mask(mass_region(own_maps[members].mean(0), max_fraction), size)
    image_region = to_image_mask(region, size) if region is not None else None
    values: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        values.setdefault(name, []).append(value)

    for position, row in enumerate(member_rows):
        if not carriers[row]:
            continue
        mask = audited.masks[ids[row]]
        near = ndimage.binary_dilation(mask, iterations=DILATION)
        neon = upsampled(own_maps[row], size)
        heatmap = lookup(ids[row])
        add("neon", positive_share(neon, mask))
        add("neon +2px", positive_share(neon, near))
        if present is not None and absent is not None:
            has, lacks = np.clip(present[row], 0, None).sum(), np.clip(absent[row], 0, None).sum()
            add("neon absent", float(lacks / max(has + lacks, 1e-30)))
            add("neon present", positive_share(upsampled(present[row], size), mask))
            add("neon present +2px", positive_share(upsampled(present[row], size), near))
        add("lrp", positive_share(heatmap, mask))
        add("lrp +2px", positive_share(heatmap, near))
        for name, found in (("region", image_region), ("window", _box(boxes, position, size)),
                            ("neon region mean", mean_region),
                            ("neon region own", to_image_mask(mass_region(own_maps[row], max_fraction), size))):
            if found is None:
                continue
            for measure_name, value in zip(("P", "R", "IoU"), overlap(found, mask)):
                add(f"{name} {measure_name}", value)
    out = {name: round(float(np.nanmedian(column)), 3) for name, column in values.items()}
    return {**out, **_mean_map_measures(audited, [ids[row] for row in member_rows], carriers[member_rows],
                                        own_maps[members].mean(0), lookup, size)}


def _mean_map_measures(audited: Audited, member_ids: list[str], carriers: np.ndarray, neon_mean: np.ndarray,
                       lookup: RelevanceLookup, size: tuple[int, int]) -> dict[str, float]:
    """The positive shares of the cluster's mean NEON map and mean heatmap (over all members: what the report
    shows) on the artifact's pixels in at least half of the carriers (none for a pattern that moves: NaN)."""
    masks = np.stack([audited.masks[i] for i, carrier in zip(member_ids, carriers) if carrier])
    mask = masks.mean(0) >= 0.5
    if not mask.any():
        return {}
    near = ndimage.binary_dilation(mask, iterations=DILATION)
    heatmap = np.mean([lookup(i) for i in member_ids], axis=0)
    neon = upsampled(neon_mean, size)
    return {"neon mean": round(positive_share(neon, mask), 3), "neon mean +2px": round(positive_share(neon, near), 3),
            "lrp mean": round(positive_share(heatmap, mask), 3), "lrp mean +2px": round(positive_share(heatmap, near), 3)}


def _member_windows(windows: np.ndarray | None, count: int) -> np.ndarray | None:
    """Each member's (top, left, height, width), when the finding's windows can be aligned with the members:
    one per member, or all the same."""
    if windows is None or not len(windows):
        return None
    if len(windows) == count:
        return windows
    return np.repeat(windows[:1], count, 0) if (windows == windows[0]).all() else None


def _box(boxes: np.ndarray | None, position: int, size: tuple[int, int]) -> np.ndarray | None:
    if boxes is None:
        return None
    top, left, height, width = (int(v) for v in boxes[position])
    box = np.zeros(size, bool)
    box[top : top + height, left : left + width] = True
    return box


# ------------------------------------------------------------------------------------------------------


COLUMNS = ["case", "model", "planted", "members", "precision_members", "neon mean", "neon mean +2px", "lrp mean",
           "lrp mean +2px", "neon", "neon +2px", "neon absent",
           "neon present", "neon present +2px", "lrp", "lrp +2px",
           "region P", "region R", "region IoU", "window P", "window R", "window IoU",
           "neon region mean P", "neon region mean R", "neon region mean IoU",
           "neon region own P", "neon region own R", "neon region own IoU"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=ROOT / "pipelines" / "demo-case",
                        help="the demo case's folder (built there when absent); 'none' to leave the demo out")
    parser.add_argument("--cases", default="0,3,4,9,12,13", help="numbers of shortcut_kinds.py's cases")
    parser.add_argument("--seed", type=int, default=1, help="shortcut_kinds.py's --seed")
    parser.add_argument("--kept", type=Path, help="folder of cases kept by shortcut_kinds.py --keep (read only)")
    parser.add_argument("--lens", action="store_true", help="also audit each case with the deep-feature lens at "
                        "its model's last convolution block (NEON at that layer, propagated to the input by LRP)")
    parser.add_argument("--min-competitor-size", type=int, help="NEON's smallest competitor cluster (default: "
                        "flagging.min_cluster_size, as the audit; 1: every cluster competes)")
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    catalogue = shortcut_cases(arguments.seed)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        jobs: list[tuple[str, tuple[str, Case] | None]] = [] if str(arguments.demo) == "none" else [("demo", None)]
        jobs += [(str(int(n)), catalogue[int(n)]) for n in arguments.cases.split(",") if n.strip()]
        for number, job in jobs:
            started = time.perf_counter()
            work = Path(temporary) / number
            work.mkdir()
            if job is None:
                audited = demo_case(arguments.demo, work)
            else:
                name, case = job
                folder = f"{int(number):02d}-{name.replace(' ', '-')}"
                kept = arguments.kept / folder if arguments.kept is not None else None
                audited = planted_case(name, case, kept, work)
            variants = [audited]
            if arguments.lens:
                (work / "lens").mkdir()
                variants.append(audited.with_lens(LENS_LAYERS[audited.model], work / "lens"))
            for variant in variants:
                for row in measure(variant, arguments.min_competitor_size):
                    row["seconds"] = round(time.perf_counter() - started, 1)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                started = time.perf_counter()
    table = pd.DataFrame(rows)
    shown = table[[c for c in COLUMNS if c in table]]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(shown.to_string(index=False))
    _summary(table)
    if arguments.json:
        arguments.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


def _summary(table: pd.DataFrame) -> None:
    """One line per kind of NEON (over the heatmaps; through the lens): medians over the flagged clusters."""
    measured = table[table.flagged > 0] if "flagged" in table else table.iloc[:0]
    if measured.empty:
        print("\nno flagged cluster to measure")
        return
    for lens, rows in measured.groupby(measured.lens.fillna(""), sort=True):
        def median(column: str, rows: pd.DataFrame = rows) -> float:
            return float(rows[column].median()) if column in rows else float("nan")

        print(f"\n{'NEON over the heatmaps' if not lens else f'NEON through the lens at layer {lens!r}'}, {len(rows)} flagged clusters "
              f"(medians of the per-cluster medians): positive share on the artifact {median('neon'):.2f} "
              f"({median('neon +2px'):.2f} within {DILATION} px), > 0.5 in {(rows.neon > 0.5).sum()}/{len(rows)}; "
              f"of what the members have (the report's map) {median('neon present'):.2f} "
              f"({median('neon present +2px'):.2f}), > 0.5 in {(rows['neon present'] > 0.5).sum() if 'neon present' in rows else 0}/"
              f"{len(rows)}, the rest of the positive relevance from what they lack {median('neon absent'):.2f}; "
              f"LRP's {median('lrp'):.2f} ({median('lrp +2px'):.2f}); flag region P/R/IoU {median('region P'):.2f}/"
              f"{median('region R'):.2f}/{median('region IoU'):.2f}, windows {median('window P'):.2f}/"
              f"{median('window R'):.2f}/{median('window IoU'):.2f}; NEON region (mean map) "
              f"{median('neon region mean P'):.2f}/{median('neon region mean R'):.2f}/"
              f"{median('neon region mean IoU'):.2f}, (own map) {median('neon region own P'):.2f}/"
              f"{median('neon region own R'):.2f}/{median('neon region own IoU'):.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
