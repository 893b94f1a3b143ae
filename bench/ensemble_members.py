"""Soup or ensemble? Score both from the same trained models, on validation data only.

    python bench/ensemble_members.py                          # the sst5-16-ensemble group
    python bench/ensemble_members.py --group sst5-16-ensemble

A `--train.soup 3` cell of bench/recipes.py keeps its 3 models in members/seed-N of its run folder:
the very models `--train.ensemble 3` trains (same seeds, data and validation carve-out). This
scores, per draw, each model alone, their averaged class probabilities (what an ensemble bundle
predicts: tests/test_ensemble.py checks that it is exactly this mean) and their averaged weights
(the soup cell's own result), on the group's validation set, and writes
bench/results/ensemble_members-validation.json. It trains nothing: run bench/recipes.py --only GROUP
first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402
from common import utc_now, write_results  # noqa: E402


def score(run: Path, val: pd.DataFrame, names: list[str]) -> dict:
    from sentilora.predict import Classifier

    y = np.array([names.index(v) for v in val["label"]])
    members = sorted((run / "members").glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    probs = [Classifier.load(m, precision="fp32").predict_proba(val["text"].tolist()) for m in members]
    each = [float(accuracy_score(y, p.argmax(1))) for p in probs]
    mean = np.mean(probs, axis=0).argmax(1)
    return {"members": [m.name for m in members], "each": [round(a, 4) for a in each],
            "first_f1": round(float(f1_score(y, probs[0].argmax(1), average="macro")), 4),
            "ensemble": round(float(accuracy_score(y, mean)), 4),
            "ensemble_f1": round(float(f1_score(y, mean, average="macro")), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", default="sst5-16-ensemble", help="a bench/recipes.py group with a train.soup variant")
    args = ap.parse_args()
    started = utc_now()
    dataset, per_class, seeds, variants = recipes.GROUPS[args.group]
    variant, overrides = next((k, v) for k, v in variants.items() if v.get("train.soup", 1) > 1)
    _, val, names = recipes.data(dataset)
    draws = []
    for seed in seeds:
        files = recipes.cell_files(dataset, per_class, seed, overrides)
        if not files.result.exists():
            sys.exit(f"{args.group} seed {seed} is not trained yet: python bench/recipes.py --only {args.group}")
        cell = json.loads(files.result.read_text())
        got = {"seed": seed, **score(files.run, val, names), "soup": round(cell["accuracy"], 4), "soup_f1": round(cell["f1"], 4)}
        print(got, flush=True)
        draws.append(got)

    def row(system: str, acc: list[float], f1: list[float] | None) -> dict:
        return {"system": f"{args.group}: {system}", "accuracy_mean": round(float(np.mean(acc)), 4),
                "accuracy_sd": round(float(np.std(acc, ddof=1)), 4), "accuracy": acc,
                "f1_mean": round(float(np.mean(f1)), 4) if f1 else None, "val_n": len(val), "seeds": list(seeds)}

    rows = [row("the first model alone (seed d: what one run trains)", [d["each"][0] for d in draws], [d["first_f1"] for d in draws]),
            row("the 3 models alone, averaged over models", [round(float(np.mean(d["each"])), 4) for d in draws], None),
            row(f"their weights averaged ({variant}, --train.soup 3)", [d["soup"] for d in draws], [d["soup_f1"] for d in draws]),
            {**row("their probabilities averaged (--train.ensemble 3)", [d["ensemble"] for d in draws],
                   [d["ensemble_f1"] for d in draws]), "per_draw": draws}]
    path = write_results("ensemble_members", "validation", rows, [], "python bench/ensemble_members.py " + " ".join(sys.argv[1:]),
                         started)
    for r in rows:
        print(f"{r['system']}: {r['accuracy_mean']} (macro-F1 {r['f1_mean']})")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
