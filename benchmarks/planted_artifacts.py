"""How well spray's flags find planted Clever Hans artifacts, on cases drawn at random.

Each case is a demo-style digits model (spray.demo) with an artifact (watermark, tag, stripe, frame) planted
on a fraction (15-35 %) of one class, at a random corner, with or without BatchNorm; plus clean models. For
each case the audit runs on every class and the flagged samples are compared with the planted ones:
precision and recall of the planted class's flags, and flags raised in any other class (which should be none).

    python benchmarks/planted_artifacts.py --cases 8 --clean 2 [--seed 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spray.demo import case_config, load_demo, prepare_demo
from spray.pipeline import run_audit

ARTIFACTS = ("watermark", "tag", "stripe", "frame")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")


def audit_case(folder: Path, demo: dict, classes: list[int] | None) -> dict:
    raw = case_config(folder, demo, classes, attribution={"batch_size": 128})
    started = time.perf_counter()
    demo_config, config = load_demo(raw, base_dir=folder)
    prepare_demo(demo_config)  # the case is built before the audit, as `python -m spray run` does
    outcome = run_audit(config, progress=False)
    manifest = pd.read_csv(folder / "case" / "images" / "manifest.csv")
    planted = set(manifest.loc[manifest.artifact == 1, "path"])
    flagged_target, flagged_other = set(), []
    for result in outcome.classes:
        for cluster in result.clusters:
            if not cluster.flagged:
                continue
            if result.class_index == demo["target_class"] and demo["artifact"] != "none":
                flagged_target |= set(cluster.members)
            else:
                flagged_other.append(f"{result.class_index}:{cluster.id}({cluster.size})")
    training = json.loads((folder / "case" / "training.json").read_text())
    true_positive = len(flagged_target & planted)
    return {
        **demo,
        "flip_rate": training.get("artifact_flip_rate"),
        "precision": true_positive / len(flagged_target) if flagged_target else None,
        "recall": true_positive / len(planted) if planted else None,
        "flags_elsewhere": flagged_other,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8, help="planted cases")
    parser.add_argument("--clean", type=int, default=2, help="clean models")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--all-classes", action="store_true", help="audit every class of planted cases too")
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    rng = np.random.default_rng(arguments.seed)
    rows = []
    for number in range(arguments.cases + arguments.clean):
        clean = number >= arguments.cases
        demo = {
            "artifact": "none" if clean else str(rng.choice(ARTIFACTS)),
            "position": str(rng.choice(POSITIONS)),
            "target_class": int(rng.integers(0, 10)),
            "fraction": 0.0 if clean else round(float(rng.uniform(0.15, 0.35)), 2),
            "batchnorm": bool(rng.integers(0, 2)),
            "seed": int(rng.integers(0, 1000)),
        }
        classes = None if clean or arguments.all_classes else [demo["target_class"]]
        with tempfile.TemporaryDirectory() as folder:
            row = audit_case(Path(folder), demo, classes)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    planted = table[table.artifact != "none"]
    print(f"\nplanted cases: precision >= 0.9 in {(planted.precision.fillna(0) >= 0.9).sum()}/{len(planted)}, "
          f"recall >= 0.9 in {(planted.recall.fillna(0) >= 0.9).sum()}/{len(planted)}; "
          f"cases with a flag outside the planted group: {(table.flags_elsewhere.str.len() > 0).sum()}/{len(table)}")
    if arguments.json:
        arguments.json.write_text(json.dumps({"cases": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
