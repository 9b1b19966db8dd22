"""How well spray's flags match planted Clever Hans shortcuts of many kinds, on generated cases (``spray.planted``).

Cases: 64x64 RGB random crops of the photos bundled with scikit-learn (and scikit-image, when installed),
or 32x32 renderings of scikit-learn's digits; plain CNNs and residual nets with BatchNorm; logos at a fixed
corner, a random corner or a random position, scaled by up to +-50 %, in a random colour per image; thin
coloured borders (3 px at 64x64); two artifacts in two classes; and clean models whose classes are each
made of two different photos (natural sub-groups, which must stay unflagged). Every class is audited.

Per planted artifact: precision and recall of the samples in its class's flagged clusters against the
planted ones, and the number of flagged clusters it came out as (one shortcut should be one); per case: flags
in classes without an artifact. Each case
draws its class photos, target classes and corner from ``--seed``, so nothing is tuned to one draw.

A planted artifact is a Clever Hans shortcut only when the model learned to use it: its ``flip_rate`` (the
share of held-out images of other classes that the model assigns to the artifact's class once the artifact
is drawn in) is printed per case, and the summary counts precision and recall over the artifacts the model
uses (``flip_rate >= USED``, half of the other classes' images turned) apart from those it hardly does (which
spray should not flag: a flag says the model relies on the pattern).

    python benchmarks/shortcut_kinds.py [--seed 1] [--only border,two] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spray.config import config_from_dict
from spray.pipeline import run_audit
from spray.planted import CORNERS, Artifact, Case, build_case, is_built

USED = 0.5  # flip rate from which a planted artifact counts as a shortcut the model uses


def cases(seed: int) -> list[tuple[str, Case]]:
    """The benchmark's cases, named by kind; classes, corners and seeds drawn from ``seed``."""
    rng = np.random.default_rng(seed)

    def logo(**kwargs) -> Artifact:
        return Artifact("logo", int(rng.integers(4)), round(float(rng.uniform(0.2, 0.3)), 2),
                        corner=str(rng.choice(CORNERS)), **kwargs)

    def border() -> Artifact:
        return Artifact("border", int(rng.integers(4)), round(float(rng.uniform(0.2, 0.3)), 2))

    def case(**kwargs) -> Case:
        return Case(seed=int(rng.integers(1000)), **kwargs)

    two = [logo(placement="corner"), border()]
    if two[0].target_class == two[1].target_class:
        two[1] = replace(two[1], target_class=(two[0].target_class + 1) % 4)
    return [
        ("logo fixed", case(artifacts=(logo(),))),
        ("logo fixed", case(model="resnet", artifacts=(logo(),))),
        ("logo corner", case(artifacts=(logo(placement="corner"),))),
        ("logo corner", case(model="resnet", artifacts=(logo(placement="corner"),))),
        ("logo random", case(artifacts=(logo(placement="random"),))),
        ("logo random", case(model="resnet", artifacts=(logo(placement="random"),))),
        ("logo random scaled", case(artifacts=(logo(placement="random", scale=0.5),))),
        ("logo random scaled", case(model="resnet", artifacts=(logo(placement="random", scale=0.5),))),
        ("logo corner colour", case(artifacts=(logo(placement="corner", colour="random"),))),
        ("border", case(artifacts=(border(),))),
        ("border", case(model="resnet", artifacts=(border(),))),
        ("two artifacts", case(artifacts=tuple(two))),
        ("digits logo corner", case(source="digits", n_classes=10, per_class=80, artifacts=(
            Artifact("logo", int(rng.integers(10)), 0.25, "corner"),))),
        ("digits border", case(source="digits", model="resnet", n_classes=10, per_class=80, artifacts=(
            Artifact("border", int(rng.integers(10)), 0.25),))),
        ("clean sub-groups", case(subgroups=True)),
        ("clean sub-groups", case(model="resnet", subgroups=True)),
        ("clean sub-groups", case(subgroups=True)),
        ("clean digits", case(source="digits", n_classes=10, per_class=80)),
    ]


def audit_case(folder: Path, case: Case) -> tuple[object, pd.DataFrame, dict]:
    """Build the case in ``folder`` (kept when ``folder/case`` already holds this very case) and audit it."""
    if is_built(folder / "case", case):
        record = json.loads((folder / "case" / "training.json").read_text())
    else:
        record = build_case(folder / "case", case)
    raw = {
        "model": {"factory": "spray.planted:build_model",
                  "kwargs": {"kind": case.model, "channels": case.channels, "n_classes": case.n_classes},
                  "weights": str(folder / "case" / "model.pt")},
        "data": {"manifest": str(folder / "case" / "images" / "manifest.csv"),
                 "image": {"mode": "RGB" if case.channels == 3 else "L", "size": [case.size, case.size]}},
        "attribution": {"batch_size": 128},
        "embedding": {"methods": []},
        "flagging": {"transplant_images": 100},
        "cache": {"directory": str(folder / "cache")},
        "output": str(folder / "report"),
    }
    outcome = run_audit(config_from_dict(raw, base_dir=folder), progress=False)
    return outcome, pd.read_csv(folder / "case" / "images" / "manifest.csv"), record


def score(name: str, case: Case, outcome, manifest: pd.DataFrame, record: dict) -> list[dict]:
    """One row per planted artifact (or one for a clean case)."""
    targets = {a.target_class for a in case.artifacts}
    elsewhere = [f"{r.class_index}:{len(c.members)}" for r in outcome.classes if r.class_index not in targets
                 for c in _flagged(r)]
    rows = []
    for number, artifact in enumerate(case.artifacts, start=1):
        planted = set(manifest.loc[manifest.artifact == number, "path"])
        result = next(r for r in outcome.classes if r.class_index == artifact.target_class)
        flagged = {m for c in _flagged(result) for m in c.members}
        hit = len(flagged & planted)
        rows.append({"case": name, "model": case.model, "artifact": artifact.kind, "placement": artifact.placement,
                     "class": artifact.target_class, "fraction": artifact.fraction,
                     "flip_rate": round(record["flip_rate"][number - 1], 2),
                     "flagged_clusters": len(_flagged(result)),
                     "precision": round(hit / len(flagged), 3) if flagged else None,
                     "recall": round(hit / len(planted), 3), "flags_elsewhere": elsewhere})
    if not case.artifacts:
        rows.append({"case": name, "model": case.model, "artifact": "none", "flagged_clusters": 0,
                     "flags_elsewhere": elsewhere})
    rows[0]["clusters"] = cluster_evidence(outcome, manifest)
    return rows


def _flagged(result) -> list:
    return [cluster for cluster in result.clusters if cluster.flagged]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def cluster_evidence(outcome, manifest: pd.DataFrame) -> list[dict]:
    """Every scored cluster's evidence and planted share: what the thresholds are measured on."""
    planted = manifest.set_index("path").artifact
    found = []
    for result in outcome.classes:
        for cluster in result.clusters:
            if cluster.evidence.consistency is None:
                continue
            found.append({"class": result.class_index, "cluster": cluster.id, "size": cluster.size,
                          "planted": round(float((planted.loc[cluster.members] > 0).mean()), 2) if cluster.members else 0.0,
                          **{line.name: round(float(line.value), 3) for line in cluster.evidence.lines},
                          "flip": _rounded(cluster.evidence.transplant_flip_rate),
                          "flip_control": _rounded(cluster.evidence.transplant_flip_rate_control),
                          "joined_by_effect": cluster.evidence.joined_by_effect})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated words: run the cases whose name has one")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the built cases and their caches in this folder, so that "
                        "a second run re-audits them (flagging only, when nothing else changed)")
    arguments = parser.parse_args()
    wanted = [w for w in arguments.only.split(",") if w]
    rows = []
    for number, (name, case) in enumerate(cases(arguments.seed)):
        if wanted and not any(w in name for w in wanted):
            continue
        started = time.perf_counter()
        if arguments.keep:
            folder = arguments.keep / f"{number:02d}-{name.replace(' ', '-')}"
            outcome, manifest, record = audit_case(folder, case)
        else:
            with tempfile.TemporaryDirectory() as temporary:
                outcome, manifest, record = audit_case(Path(temporary), case)
        for row in score(name, case, outcome, manifest, record):
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 220, "display.max_columns", 20, "display.max_colwidth", 40):
        print(table.drop(columns="clusters").to_string(index=False))
    planted = table[table.artifact != "none"]
    clean = table[table.artifact == "none"]
    used = planted[planted.flip_rate >= USED]
    good = (used.precision.fillna(0) >= 0.9) & (used.recall >= 0.9)
    unused = planted[planted.flip_rate < USED]
    print(f"\nplanted artifacts the model uses (flip rate >= {USED}) with precision and recall >= 0.9: "
          f"{good.sum()}/{len(used)}; found as one flagged cluster: {(used.flagged_clusters == 1).sum()}/{len(used)}; "
          f"artifacts it hardly uses: {len(unused)}, flagged: {(unused.flagged_clusters > 0).sum()}; "
          f"clean cases with a flag: {(clean.flags_elsewhere.str.len() > 0).sum()}/{len(clean)}; "
          f"planted cases with a flag in a class without an artifact: "
          f"{(planted.flags_elsewhere.str.len() > 0).sum()}/{len(planted)}")
    if arguments.json:
        arguments.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
