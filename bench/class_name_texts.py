"""Class names as training texts at 16 labels per class, on validation data only (a probe outside the product).

    python bench/class_name_texts.py        # SST-5 (10 draws) and P3 (3 draws), every variant (cached per cell)

SetFit's `get_templated_dataset` makes training texts from the class names ("This sentence is {}",
2 per class), for zero-shot and few-shot runs. This tries the same on the two cells where sentilora's
default trails SetFit on test (SST-5 and P3 at 16 per class): each variant adds its texts to a
bench/recipes.py cell's training file and trains with every setting left at its default. It is
compared with the default of that time (no such texts) on the same draws. The product has since gained
the option (`--train.class_name_texts N`, appending the same texts to the training split; SST-5's first
draw with 2 gives the same 0.3479 through it), and in the sixteenth session `--preset auto` turned it on
where the contrastive stage runs: the cells here pin it to 0 and add their own texts. Cells are cached in
bench/work/class_name_texts/; results go to bench/results/class_name_texts-validation.json.

First run on 2026-12-07 (fifteenth session, Xeon, fp32). Its P3 and SST-5 cells with SetFit's template
trained beside other jobs on the 2 cores (a CI run, the quickstart): their training seconds say nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402
from common import WORK_DIR, machine_info, utc_now, write_results  # noqa: E402

WORK = WORK_DIR / "class_name_texts"
DRAWS = {"sst5": 10, "p3": 3}
# variant -> (its key in the cache, texts per class, template)
VARIANTS = {"default": ("default", 0, ""), "the bare name, 1 per class": ("names1", 1, "{}"),
            "'a {} review', 1 per class": ("names-review", 1, "a {} review"),
            "SetFit's 'This sentence is {}', 2 per class": ("setfit-template", 2, "This sentence is {}")}
SKIP = {("p3", "'a {} review', 1 per class")}  # not run: a P3 cell takes 5-10 minutes on the Xeon


def cell(dataset: str, seed: int, variant: str) -> dict:
    """Train and score one draw with `variant`'s texts added (cached)."""
    key, copies, template = VARIANTS[variant]
    tag = f"{dataset}-16-s{seed}-{key}"
    out = WORK / f"{tag}.json"
    if out.exists():
        return json.loads(out.read_text())
    files = recipes.cell_files(dataset, 16, seed, {"train.class_name_texts": 0})  # none but the variant's (same key)
    settings = dict(files.settings)
    if copies:
        train = pd.read_parquet(settings["data.source"])
        names = settings["data.label_names"].split(",")
        extra = pd.DataFrame({"text": [template.format(n) for n in names for _ in range(copies)],
                              "label": [n for n in names for _ in range(copies)]})
        if not isinstance(train["label"].iloc[0], str):
            extra["label"] = [i for i in range(len(names)) for _ in range(copies)]
        path = WORK / "data" / f"{tag}-train.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat([train, extra], ignore_index=True).to_parquet(path, index=False)
        settings["data.source"] = str(path)
    run = WORK / "runs" / tag
    figures = recipes.train_and_score(settings, run, files.val)
    if isinstance(figures, str):
        sys.exit(f"cell {tag} failed:\n{figures}")
    row = {"dataset": dataset, "seed": seed, "variant": variant, "cpu": machine_info()["cpu"], **figures}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    shutil.rmtree(run, ignore_errors=True)  # only the figures are kept
    return row


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    started, rows = utc_now(), []
    for dataset, n in DRAWS.items():
        default = None
        for variant in VARIANTS:
            if (dataset, variant) in SKIP:
                continue
            cells = [cell(dataset, seed, variant) for seed in range(n)]
            acc = [c["accuracy"] for c in cells]
            print(f"{dataset} 16/class, {variant}: {np.mean(acc):.4f} ({', '.join(f'{a:.4f}' for a in acc)})", flush=True)
            default = acc if variant == "default" else default
            rows.append({"system": f"{dataset}-16: {variant}", "val_n": len(recipes.data(dataset)[1]),
                         "accuracy_mean": round(float(np.mean(acc)), 4), "accuracy_sd": round(float(np.std(acc, ddof=1)), 4),
                         "accuracy": [round(a, 4) for a in acc], "f1_mean": round(float(np.mean([c["f1"] for c in cells])), 4),
                         "higher_than_default": None if variant == "default" else
                         f"{sum(a > d for a, d in zip(acc, default))} of {n}",
                         "train_s": [round(c["train_s"]) for c in cells], "cpu": sorted({c["cpu"] for c in cells})})
    write_results("class_name_texts", "validation", rows, [], "python bench/class_name_texts.py", started)


if __name__ == "__main__":
    main()
