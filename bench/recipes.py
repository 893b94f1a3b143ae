"""Recipe choices for issue #15, made on validation data only (never a test split).

    python bench/recipes.py                  # every variant below (cached per cell)
    python bench/recipes.py --only imdb-64   # some groups (the others keep their cached cells)

Each cell trains sentilora (MiniLM) on a draw of the training data with one variant's overrides
and scores it on a validation set: for IMDB a fixed balanced 1,000 reviews held out of the train
split (the draws come from the rest), for SST the official validation split. Cells are cached in
bench/work/recipes/<key>.json by everything that determines them; the results file
bench/results/recipes-validation.json has one row per (group, variant) with mean and sd over seeds,
and the CPU its cells ran on (rows without one ran on 2 AMD EPYC Zen 4 cores, with bf16 autocast). A group
not named in --only keeps its rows as last written, even where its cells are cached, and so does a group
since removed from GROUPS (a comment there says why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    P3_CLASS_NAMES, SHARED, SST2_CLASS_NAMES, SST5_CLASS_NAMES, WORK_DIR, config_for_key, machine_info, p3, sst, utc_now,
    write_results,
)

WORK = WORK_DIR / "recipes"
SST = SHARED.parent / "sst"

def _logistic_head_variants(*steps: int) -> dict[str, dict[str, Any]]:
    """The head change of 2026-12-06: the stage of 100 steps, then the logistic head and the 200-step
    floor; and for each of `steps`, a stage of that many steps, then the logistic head without the floor."""
    base = {"model.pooling": "mean", "model.head_init": "logistic"}
    out = {"mean, contrastive 100, logistic head": {**base, "train.contrastive_steps": 100}}
    for n in steps:
        out[f"mean, contrastive {n}, logistic head, min steps 0"] = {**base, "train.contrastive_steps": n, "train.min_steps": 0}
    return out


OLD_RECIPE = {"lora.target_modules": ["qv"], "lora.r": 8, "lora.alpha": 16, "train.lr": 2e-3, "train.epochs": 6,
              "train.select_metric": "accuracy"}
SHORT_RECIPE = {"lora.target_modules": ["all"], "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3, "train.epochs": 2,
                "train.select_metric": "accuracy"}  # --preset auto's row for 1,000+ short texts

# group -> (data set, labels per class or None for all, seeds, {variant: overrides})
# Each group's rows are kept as measured; a cell takes the defaults of the code that runs it. Since the sixteenth
# session the default adds 2 training texts per class made from the class names where the contrastive stage runs
# (16 per class here): to re-run an older 16-per-class group as it was, add {"train.class_name_texts": 0} to its
# variants (the cells keep their keys).
GROUPS: dict[str, tuple[str, int | None, tuple[int, ...], dict[str, dict[str, Any]]]] = {
    "imdb-64": ("imdb", 64, (0, 1), {"cls": {"model.pooling": "cls"}, "mean": {"model.pooling": "mean"}}),
    "imdb-16": ("imdb", 16, (0, 1), {"mean": {"model.pooling": "mean"},
                                     "mean+prototypes": {"model.pooling": "mean", "model.head_init": "prototypes"}}),
    "sst5-full": ("sst5", None, (0,), {"cls": {"model.pooling": "cls"}, "mean": {"model.pooling": "mean"},
                                       "mean, encoder dropout 0.1": {"model.pooling": "mean", "model.dropout": None},
                                       "mean, lr 5e-4": {"model.pooling": "mean", "train.lr": 5e-4},
                                       "mean, LoRA on all linears": {"model.pooling": "mean", "lora.target_modules": ["all"]},
                                       "mean, 10 epochs": {"model.pooling": "mean", "train.epochs": 10}}),
    "sst2-full": ("sst2", None, (0,), {"mean": {"model.pooling": "mean"},
                                       "mean, 10 epochs": {"model.pooling": "mean", "train.epochs": 10}}),
    "sst5-16": ("sst5", 16, (0, 1, 2, 3, 4), {"mean": {"model.pooling": "mean", "train.contrastive_steps": 0},
                                        "mean+prototypes": {"model.pooling": "mean", "model.head_init": "prototypes",
                                                            "train.contrastive_steps": 0},
                                        "mean, contrastive 100": {"model.pooling": "mean", "train.contrastive_steps": 100},
                                        "mean, contrastive 200": {"model.pooling": "mean", "train.contrastive_steps": 200},
                                        "mean, contrastive 100, min steps 50": {"model.pooling": "mean", "train.contrastive_steps": 100,
                                                                                "train.min_steps": 50},
                                        "mean, contrastive 50, min steps 100": {"model.pooling": "mean", "train.contrastive_steps": 50,
                                                                                "train.min_steps": 100},
                                        "mean, contrastive 100, LoRA on all linears": {"model.pooling": "mean", "train.contrastive_steps": 100,
                                                                                       "lora.target_modules": ["all"]},
                                        "mean, contrastive 200, LoRA on all linears": {"model.pooling": "mean", "train.contrastive_steps": 200,
                                                                                       "lora.target_modules": ["all"]}}),
    "sst2-16": ("sst2", 16, (0, 1, 2, 3, 4), {"mean": {"model.pooling": "mean", "train.contrastive_steps": 0},
                                        "mean, contrastive 100": {"model.pooling": "mean", "train.contrastive_steps": 100},
                                        "mean, contrastive 100, min steps 50": {"model.pooling": "mean", "train.contrastive_steps": 100,
                                                                                "train.min_steps": 50},
                                        "mean, contrastive 50, min steps 100": {"model.pooling": "mean", "train.contrastive_steps": 50,
                                                                                "train.min_steps": 100}}),
    "sst5-16-head": ("sst5", 16, (0, 1, 2, 3, 4), _logistic_head_variants(100, 200)),
    "sst2-16-head": ("sst2", 16, (0, 1, 2, 3, 4), _logistic_head_variants(100, 50)),
    # Levers on the default after 2026-12-06 (contrastive stage, logistic head, no step floor).
    "sst5-16-levers": ("sst5", 16, (0, 1, 2, 3, 4), {
        "default, 1 epoch after the stage": {"train.epochs": 1},
        "default, 12 epochs after the stage": {"train.epochs": 12},
        "default, LoRA r 32": {"lora.r": 32, "lora.alpha": 64},
        "default, LoRA on attention": {"lora.target_modules": ["attention"]}}),
    "sst5-full-levers": ("sst5", None, (0,), {
        "default": {},
        "default, logistic head": {"model.head_init": "logistic"},
        "default, LoRA on attention": {"lora.target_modules": ["attention"]},
        "default, LoRA r 16 on all linears, lr 1e-3": {"lora.target_modules": ["all"], "lora.r": 16, "lora.alpha": 32,
                                                      "train.lr": 1e-3}}),
    "imdb-256": ("imdb", 256, (0, 1), {
        "10% held out (min_held_out 50, the default before 2026-12-06)": {"data.min_held_out": 50},
        "no hold-out under 1,000 rows (min_held_out 100)": {"data.min_held_out": 100}}),
    "imdb-64-levers": ("imdb", 64, (0, 1), {
        "default, logistic head": {"model.head_init": "logistic"},
        "default, 400 steps at least": {"train.min_steps": 400}}),
    "sst5-full-schedule": ("sst5", None, (0, 1), {
        "default": {},
        "default, 3 epochs": {"train.epochs": 3},
        "default, lr 1e-3": {"train.lr": 1e-3}}),
    # The GPU sweep's winner on full SST-5 (bench/recipes_gpu.py, recipes — gpu), checked on the CPU, and
    # at 2,000 texts (400 / 1,000 per class), where the "many short texts" rule starts.
    **{f"{ds}-{n or 'full'}-short-recipe": (ds, n, (0, 1), {
        "qv r8, lr 2e-3, 6 epochs (the recipe before 2026-12-06)": OLD_RECIPE,
        "all linears r16, lr 1e-3, 2 epochs": SHORT_RECIPE}) for ds, n in (("sst5", None), ("sst2", None), ("sst5", 400), ("sst2", 1000))},
    # The short-text recipe keeps the better of its 2 epochs on a 10% carve-out; one SST-5 test draw kept epoch 1
    # (0.473 against 0.510-0.519): against training on every row and keeping the final weights.
    **{f"{ds}-full-short-recipe-holdout": (ds, None, (0, 1), {
        "all linears r16, lr 1e-3, 2 epochs, no carve-out (final weights)": {**SHORT_RECIPE, "data.min_held_out": 10**9}})
       for ds in ("sst5", "sst2")},
    # ... and picking its best epoch by carve-out loss rather than accuracy: that SST-5 draw's epochs 1 and 2
    # were one text apart in accuracy (0.4854, 0.4842) and the loss favoured epoch 2 (1.1704, 1.1706).
    # Mixed (2 draws each): SST-5 0.498 against 0.485, SST-2 0.876 against 0.882; not adopted.
    **{f"{ds}-full-short-recipe-select": (ds, None, (0, 1), {
        "all linears r16, lr 1e-3, 2 epochs, best epoch by validation loss": {**SHORT_RECIPE, "train.select_metric": "loss"}})
       for ds in ("sst5", "sst2")},
    # ... and below the rule's 1,800 texts (no carve-out under 1,000 rows: the 200-step floor applies).
    **{f"{ds}-{n}-short-recipe": (ds, n, (0, 1, 2), {
        "qv r8, lr 2e-3, 6 epochs (the recipe before 2026-12-06)": OLD_RECIPE,
        "all linears r16, lr 1e-3, 2 epochs": SHORT_RECIPE}) for ds, n in (("sst5", 256), ("sst2", 256), ("sst5", 64), ("sst2", 64))},
    # The contrastive stage on long reviews at 16 per class (until 2026-12-06, fourth session, the rule kept it to
    # short texts): P3, where SetFit led by 5 points on the one test draw it ran, and IMDB. 20 pairs per text, as
    # the rule counts them. Adopted: the stage now runs for any text length.
    "p3-16-contrastive": ("p3", 16, (0, 1, 2), {"contrastive 80 steps (20 pairs per text)": {"train.contrastive_steps": 80},
                                                "no stage (the default before)": {"train.contrastive_steps": 0}}),
    "imdb-16-contrastive": ("imdb", 16, (0, 1, 2), {"no stage (the default before)": {"train.contrastive_steps": 0},
                                                    "contrastive 50 steps (20 pairs per text, 50 at least)": {"train.contrastive_steps": 50}}),
    # IMDB at 64 per class: one of three test draws reached 0.710 (others 0.851, 0.804) at the default lr 2e-3;
    # on the GPU lr 1e-3 scored 0.819 against 0.812 over 5 draws (3 higher). Three draws each on the CPU
    # (2026-12-06, fifth session): 0.823 against 0.810, every draw higher; on test (suite row {"train.lr": 0.001})
    # 0.793 against 0.788, still under the 0.80 goal. Not yet a default: lr 2e-3 is the standard row's, which
    # every cell from 64 per class up (and the stage at 16) uses; a rule for small data needs those cells too.
    "imdb-64-lr": ("imdb", 64, (0, 1, 2), {"default (lr 2e-3)": {}, "lr 1e-3": {"train.lr": 1e-3}}),
    # ... and the same lr at the other small sizes that use the standard row without the stage, for a size rule.
    # lr 1e-3 against 2e-3: SST-5 64 0.388 / 0.383 (macro-F1 0.392 / 0.376), SST-2 64 0.781 / 0.775, P3 64
    # 0.482 / 0.484, IMDB 256 0.856 / 0.861. Gains at 64 per class on short texts and IMDB, losses on P3 and at
    # 256: no rule adopted yet (a next step: more draws at 64 per class).
    **{f"{ds}-{n}-lr": (ds, n, seeds, {"default (lr 2e-3)": over, "lr 1e-3": {**over, "train.lr": 1e-3}})
       for ds, n, seeds, over in (("sst5", 64, (0, 1, 2), {"train.ordinal_smoothing": 0.2}), ("sst2", 64, (0, 1, 2), {}),
                                  ("p3", 64, (0, 1, 2), {}), ("imdb", 256, (0, 1), {"data.min_held_out": 100}))},
    # Ordered classes: a soft target on the true class's neighbours (--train.ordinal_smoothing).
    **{f"sst5-{n or 'full'}-ordinal": ("sst5", n, seeds, {f"ordinal smoothing {x}" if x else "no ordinal smoothing":
                                                         {"train.ordinal_smoothing": x} for x in (0.0, 0.2, 0.4)})
       for n, seeds in ((None, (0, 1, 2)), (64, (0, 1, 2)), (16, (0, 1, 2, 3, 4)))},
    "p3-16-ordinal": ("p3", 16, (0, 1, 2), {"default (contrastive stage)": {},
                                            "ordinal smoothing 0.2": {"train.ordinal_smoothing": 0.2},
                                            "ordinal smoothing 0.4": {"train.ordinal_smoothing": 0.4}}),
    # Ordered classes in the contrastive stage (--train.contrastive_ordinal): neighbouring classes pulled to a
    # similarity between SetFit's 0 and 1, falling to 0 for the two ends. The defaults as they were otherwise.
    # On P3 only the value that led on SST-5 (0.75 lost there). SST-5 got 5 more draws after the suite's test
    # draws showed no gain (accuracy 0.3365 against 0.3368, macro-F1 0.313 against 0.324): over 10 draws 0.348
    # against 0.344, within the draws' spread. Not made a default; the option stays.
    **{f"{ds}-16-contrastive-ordinal": (ds, 16, seeds, {"SetFit's 0 for every two classes": {"train.contrastive_ordinal": 0.0},
                                                        **{f"neighbours {x}": {"train.contrastive_ordinal": x} for x in values}})
       for ds, seeds, values in (("sst5", tuple(range(10)), (0.4, 0.75)), ("p3", (0, 1, 2), (0.4,)))},
    # SST-5 at 16 per class, 0.4 points behind SetFit on test: the learning rate (stage and ordinary training both),
    # the epochs after the stage, a smaller LoRA rank. None beat the default (lr 2e-3, 6 epochs, r 8) over 10 draws.
    "sst5-16-lr": ("sst5", 16, tuple(range(10)), {f"lr {lr:g}": {"train.lr": lr} for lr in (2e-3, 1e-3, 5e-4, 4e-3)}),
    "sst5-16-levers-2": ("sst5", 16, tuple(range(10)), {"3 epochs after the stage": {"train.epochs": 3},
                                                        "LoRA r 4": {"lora.r": 4, "lora.alpha": 8}}),
    # P3 at 16 per class, 0.2 points behind SetFit on test: as many pairs as SetFit draws (2 x 20 per text).
    # Stopped after one draw: 0.427 against 0.429 with 80 steps, in 281 s against 120 s. Not adopted.
    "p3-16-contrastive-pairs": ("p3", 16, (0,), {"contrastive 160 steps (40 pairs per text)": {"train.contrastive_steps": 160}}),
    # IMDB at 64 per class with the contrastive stage (the rule runs it under 40 texts per class): 20 pairs per text.
    # Stopped after one draw: 0.803 against 0.846 without the stage (group imdb-64, mean), in 358 s against 101 s.
    # Not adopted.
    "imdb-64-contrastive": ("imdb", 64, (0,), {"contrastive 160 steps (20 pairs per text)": {"train.contrastive_steps": 160}}),
    # A moving average of the trained weights (--train.ema, used for validation, the best epoch and the bundle;
    # the code as measured is commit 65a7635, removed in the next): the cells still under their goals on test
    # (full SST-5 0.52, full SST-2 0.89, IMDB 64 per class 0.80), and SST-5 at 16 per class. No win: SST-5 full
    # 0.490 against 0.486 (3 draws, one lower), SST-2 full 0.880 against 0.883, IMDB 64 0.810 against 0.810,
    # SST-5 16 0.340 against 0.344 (10 draws). The decay's warm-up, (1 + step) / (10 + step), stays under 0.99
    # until step 890, so in runs this short both decays averaged about the last tenth of the steps alike.
    # Their rows stay in bench/results/recipes-validation.json until this script next writes it.
    # IMDB at 64 per class: training on 512 tokens of each review instead of 256 (prediction reads 512 either way).
    # 0.820 against 0.810 (draws 0.833, 0.807, 0.820 against 0.842, 0.791, 0.797: the two weaker draws gained),
    # in 2.5x the training time (210-240 s against 85-100 s). On test (the suite's {"model.max_length": 512} row)
    # 0.804 against 0.788 (0.830, 0.811, 0.771 against 0.851, 0.804, 0.710), over the 0.80 goal. Not a default yet:
    # the rule would cover every long-text cell under 1,000 texts (IMDB and P3 at 16, 64, 256 per class), which
    # need measuring at 512 on validation first.
    "imdb-64-length": ("imdb", 64, (0, 1, 2), {"default (256 tokens)": {}, "512 tokens": {"model.max_length": 512}}),
    # ... and the other long-text sizes a rule for few long texts would cover. P3 at 64 per class: 0.495 against
    # 0.484 (0.513, 0.491, 0.481 against 0.504, 0.474, 0.474: every draw higher), 271-484 s of training against
    # 82-91 s. On test (suite row {"model.max_length": 512}) 0.501 against 0.495 (0.508, 0.484, 0.511 against
    # 0.497, 0.488, 0.501), in 271-311 s against 93-95 s.
    "p3-64-length": ("p3", 64, (0, 1, 2), {"default (256 tokens)": {}, "512 tokens": {"model.max_length": 512}}),
    # P3 at 16 per class, where the contrastive stage runs: 0.429 against 0.429 on the first draw, in 1,296 s
    # (beside the test suite) against 308 s. Stopped there: 4x the time for nothing, and at 16 per class the
    # suite's time goal (no slower than SetFit: 188 s on IMDB) leaves no room. The rule leaves these sizes at 256.
    # SST-5 at 16 per class, 0.4 points behind SetFit on test: two more levers on today's default, 10 draws.
    # Neither won against the default's 0.344: LoRA dropout 0.1 0.344 (a tie), 200 contrastive steps 0.339
    # (SetFit's 40 pairs per text, against 20 today) in 40 s against 15. Not adopted.
    "sst5-16-levers-3": ("sst5", 16, tuple(range(10)), {"LoRA dropout 0.1": {"lora.dropout": 0.1},
                                                        "contrastive 200 steps (40 pairs per text)": {"train.contrastive_steps": 200}}),
    "p3-16-length": ("p3", 16, (0,), {"default (256 tokens)": {}, "512 tokens": {"model.max_length": 512}}),
    # IMDB at 256 per class (512 training texts): 0.872 against 0.861 (0.876, 0.871, 0.868 against 0.859, 0.863,
    # 0.862: every draw higher), 296-324 s of training against about 125 s. With IMDB and P3 at 64 per class this
    # made 512 tokens --preset auto's choice for 40+ texts per class and under 600 long texts (P3 at 256 per
    # class, 922 texts after the carve-out, is not measured and stays at 256).
    "imdb-256-length": ("imdb", 256, (0, 1, 2), {"default (256 tokens)": {}, "512 tokens": {"model.max_length": 512}}),
    # Full SST-5 and SST-2, under their test goals (0.52, 0.89): three models (seeds s, s+1, s+2, the same data
    # and carve-out) averaged weight by weight into one (--train.soup 3) against one model. SST-5: 0.486 against
    # 0.486 (0.484, 0.484, 0.491 against 0.497, 0.473, 0.487), macro-F1 0.424 against 0.452; SST-2: 0.881 against
    # 0.883 (0.870, 0.884, 0.889 against 0.881, 0.883, 0.884). Not a default; on SST-5 test (suite rows with
    # {"train.soup": 3}) accuracy rose (0.509 against 0.501) and macro-F1 fell (0.445 against 0.468). The first
    # SST-5 soup's 1,100 s was taken beside another job; alone a soup trains in 222-235 s.
    **{f"{ds}-full-soup": (ds, None, (0, 1, 2), {"one model": {"train.soup": 1}, "3 models averaged": {"train.soup": 3}})
       for ds in ("sst5", "sst2")},
    # SST-5 at 16 per class, 0.4 points behind SetFit on test: three models averaged, each with its own contrastive
    # stage. Stopped after 2 draws: 0.333 and 0.359 against the default's 0.322 and 0.368, no clear gain. Their
    # training times (314-385 s) were taken beside two other jobs on the 2 cores and say nothing.
    "sst5-16-soup": ("sst5", 16, (0, 1), {"default": {}, "3 models averaged": {"train.soup": 3}}),
    # From the ninth session on an Intel Xeon (2 cores, no native bf16, so --train.precision auto is fp32 and a
    # full SST-5 model trains in 164-199 s, not 66-90 s); the rows name their CPU.
    # Full SST-5, under its test goal: the encoder dropout the CPU default leaves off for speed (it drew masks for
    # a third of a step). It lost: 0.476 (0.467, 0.472, 0.488) against 0.496 (0.502, 0.501, 0.484). Not adopted.
    "sst5-full-regularise": ("sst5", None, (0, 1, 2), {"one model": {"train.soup": 1},
                                                      "encoder dropout 0.1": {"model.dropout": 0.1}}),
    # Training precision, side by side on that Xeon (bf16 autocast is emulated there: 2.3x slower, but the same
    # arithmetic as on a CPU that has it; its draws came within 0.2 points of the Zen 4 ones, 0.4950 against
    # 0.4968 and 0.4868 against 0.4868, but for one, 0.4986 against 0.4732). Full SST-5: fp32 0.496 against bf16
    # 0.494 (0.502, 0.501, 0.484 against 0.495, 0.499, 0.487), within the draws' spread. At 16 per class fp32 on
    # the Xeon against bf16 on Zen 4 (sst5-16-lr, lr 0.002), the same 10 draws: 0.343 against 0.344, each draw
    # within 0.2 points. Full SST-2: fp32 0.880 against bf16 0.883 (0.875, 0.887, 0.878 against 0.881, 0.884,
    # 0.883; the bf16 draws are the Zen 4 ones to 4 decimals). Precision is no lever for the goals; auto stays
    # bf16 where the CPU has it.
    "sst5-16-precision": ("sst5", 16, tuple(range(10)), {"fp32": {"train.precision": "fp32"}}),
    # Tenth session (Xeon, fp32): 3 models per draw, kept in the run's members/ so that averaging their
    # class probabilities (an ensemble) can be scored beside the averaged weights (the soup row).
    "sst5-16-ensemble": ("sst5", 16, tuple(range(10)), {"3 models averaged": {"train.soup": 3}}),
    # Full SST-5: 3 models whose class probabilities are averaged (--train.ensemble 3), against one model
    # (sst5-full-regularise's first row, the same draws on this Xeon).
    "sst5-full-ensemble": ("sst5", None, (0, 1, 2, 3, 4, 5), {  # draws 3-5: fourteenth session; no TF-IDF blend, as before
        "one model": {"train.baseline_blend": "off"},
        "3 models, probabilities averaged": {"train.ensemble": 3, "train.baseline_blend": "off"}}),
    # Eleventh session (Xeon, fp32): full SST-2 and SST-5, under their test goals (0.89, 0.52), on levers of the
    # LoRA update itself, against one model of the short-text recipe (the precision groups' first row). DoRA
    # (--lora.dora): SST-2 0.883 against 0.880 (0.881, 0.889, 0.878 against 0.875, 0.886, 0.878), SST-5 0.479
    # against 0.496 (0.489, 0.472, 0.477 against 0.502, 0.501, 0.484: every draw lower), in 1.5-2x the time. Not a
    # default; the option stays. lr 5e-4 for 3 epochs lost on SST-2 (0.870: 0.864, 0.870, 0.875) and was not run
    # on SST-5. Retired: LoRA+ (B matrices at 4x the lr, a --lora.b_lr_ratio removed again) lost on SST-2, 0.741
    # (0.867, 0.848, and 0.509: one draw collapsed to one class); its row stays in the results file.
    "sst2-full-lora-variants": ("sst2", None, (0, 1, 2), {
        "one model": {}, "DoRA": {"lora.dora": True}, "lr 5e-4, 3 epochs": {"train.lr": 5e-4, "train.epochs": 3}}),
    "sst5-full-lora-variants": ("sst5", None, (0, 1, 2), {"one model": {}, "DoRA": {"lora.dora": True}}),
    # Full SST-2, under its test goal (0.89): 3 models whose class probabilities are averaged (--train.ensemble 3),
    # as sst5-full-ensemble measured on SST-5. Won every draw: 0.888 (0.882, 0.890, 0.891) against 0.880 (0.875,
    # 0.886, 0.878), in 452-492 s of training against 114-125 s (SST-5 lost: 0.491 against 0.496).
    "sst2-full-ensemble": ("sst2", None, (0, 1, 2), {  # no TF-IDF blend, as measured (it came later)
        "one model": {"train.baseline_blend": "off"},
        "3 models, probabilities averaged": {"train.ensemble": 3, "train.baseline_blend": "off"}}),
    **{f"{ds}-full-precision": (ds, None, (0, 1, 2), {"auto (fp32 on this CPU)": {}, "bf16": {"train.precision": "bf16"}})
       for ds in ("sst5", "sst2")},
    # Thirteenth session (Xeon, fp32): full SST-2 and SST-5, under their test goals (0.89, 0.52): the TF-IDF baseline
    # mixed into the model's probabilities (--train.baseline_blend), at the weight of 0 to 0.6 with the lowest
    # log-loss on the run's carve-out (692 and 855 texts), against the model alone (the same cached cells as
    # sst2-full-ensemble's and sst5-full-regularise's first rows). SST-2: 0.885 (0.881, 0.890, 0.885) against 0.880
    # (0.875, 0.886, 0.878), every draw higher, at weights 0.2, 0.2, 0.25; SST-5: 0.497 (0.505, 0.494, 0.491)
    # against 0.496 (0.502, 0.501, 0.484), one draw lower, at 0.15 each. Fitting the baseline and choosing the
    # weight took 3.5-9.3 s after training. A probe outside the product on the same bundles had found the same
    # figures first. Adopted by --preset auto for 1,000+ short texts with 500+ validation texts (recipe.py).
    "sst2-full-blend": ("sst2", None, (0, 1, 2), {"model alone": {"train.baseline_blend": "off"}, "TF-IDF blend": {}}),
    "sst5-full-blend": ("sst5", None, (0, 1, 2), {"model alone": {"train.baseline_blend": "off"}, "TF-IDF blend": {}}),
    # Fourteenth session (Xeon, fp32): 3 models whose probabilities are averaged, with the TF-IDF blend on both
    # sides (the product's blend on each run; the one-model cells are sst*-full-blend's). Adopted by --preset auto
    # for 5,000+ short training texts (recipe.py: ENSEMBLE), SST-5 too after sst5-full-ensemble's 6 draws.
    # Fifteenth session (Xeon, fp32): --train.class_name_texts 2 (bench/class_name_texts.py's lead on SST-5 and P3)
    # at the other short-text cell the stage covers: 0.737 (0.784, 0.703, 0.677, 0.766, 0.755) against 0.723 (0.771, 0.728,
    # 0.609, 0.760, 0.747), 4 of 5 draws higher. Its first default cells trained beside a CI run: their seconds say nothing.
    "sst2-16-class-names": ("sst2", 16, (0, 1, 2, 3, 4), {"none (the default before)": {"train.class_name_texts": 0},
                                                        "class names, 2 per class": {"train.class_name_texts": 2}}),
    # Sixteenth session (Xeon, fp32): the same at IMDB's 16 per class (long reviews, the contrastive stage runs), before
    # --preset auto turns it on wherever the stage runs.
    "imdb-16-class-names": ("imdb", 16, (0, 1, 2, 3, 4), {"none (the default before)": {"train.class_name_texts": 0},
                                                        "class names, 2 per class": {"train.class_name_texts": 2}}),
    "sst2-full-ensemble-blend": ("sst2", None, (0, 1, 2), {"one model, TF-IDF blend": {},
                                                           "3 models, TF-IDF blend": {"train.ensemble": 3}}),
    # Retired: sst5-full-soup-one-start, 3 models that shared their starting weights (LoRA init, head) and differed
    # only in batch order, averaged (a --train.order_seed, at commit 38bb2e5, removed in the next). A probe outside
    # the product had them ahead on Zen 4 (0.489 against 0.485); in the product, on the Xeon, they lost every draw:
    # 0.495, 0.495, 0.481 against 0.502, 0.501, 0.484 (macro-F1 0.457 against 0.471), in 440-470 s against
    # 153-186 s (one cell's 621 s includes a 3-minute pause). One member kept epoch 1 of 2, farther from the others.
    # --train.soup keeps models of different seeds. The row stays in the results file (retired groups' rows are
    # kept as written).
}


def _p3() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """P3 (IMDB by stars, 4 classes): a fixed balanced 1,000 held out of train, the draws from the rest."""
    train = p3()[0][["text", "label"]]
    val = train.groupby("label", group_keys=False).sample(n=250, random_state=123)
    return train.drop(val.index), val, P3_CLASS_NAMES


def _imdb() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    train = pd.read_parquet(SHARED / "train.parquet")[["text", "label"]]
    val = train.groupby("label", group_keys=False).sample(n=500, random_state=123)
    return train.drop(val.index), val, ["negative", "positive"]


def _sst5() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    train, val = (pd.read_parquet(SST / f"sst5_{s}.parquet")[["text", "label"]] for s in ("train", "validation"))
    return train, val, SST5_CLASS_NAMES


def _sst2() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    return sst("sst2", "train"), sst("sst2", "validation"), SST2_CLASS_NAMES


def data(dataset: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    return {"imdb": _imdb, "p3": _p3, "sst5": _sst5, "sst2": _sst2}[dataset]()


def draw(train: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    """A cell's training rows: `per_class` of each label (seeded), or all of them."""
    return train.groupby("label", group_keys=False).sample(n=per_class, random_state=seed) if per_class else train


def _write(df: pd.DataFrame, path: Path) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").replace(path)
    return path


class CellFiles(NamedTuple):
    settings: dict[str, Any]  # the training overrides
    result: Path  # the cached row (JSON), once the cell has run
    run: Path  # its trained bundle
    val: Path  # the validation file it is scored on
    val_n: int


def cell_files(dataset: str, per_class: int | None, seed: int, overrides: dict[str, Any]) -> CellFiles:
    """Where a cell's result, bundle and data are, by the key of everything that determines it
    (bench/ensemble_members.py reads a soup cell's members from its bundle)."""
    train, val, names = data(dataset)
    train = draw(train, per_class, seed)
    tag = f"{dataset}-{per_class or 'full'}-s{seed}"
    train_p, val_p = _write(train, WORK / "data" / f"{tag}-train.parquet"), _write(val, WORK / "data" / f"{dataset}-val.parquet")
    settings = {"model.name": "minilm", "data.source": str(train_p), "data.label_names": ",".join(names),
                "train.seed": seed, "data.seed": seed, **overrides}
    if not {"train.ensemble", "train.soup"} & set(overrides):
        settings["train.ensemble"] = 1  # the groups weigh levers of one model (--preset auto trains 3 on full SST)
    from sentilora.config import Config

    resolved = config_for_key(Config().override(settings).to_dict(), dataset, per_class)
    key = hashlib.sha256(json.dumps([resolved, str(val_p)], sort_keys=True).encode()).hexdigest()[:12]
    return CellFiles(settings, WORK / f"{tag}-{key}.json", WORK / "runs" / f"{tag}-{key}", val_p, len(val))


def train_and_score(settings: dict[str, Any], run: Path, val_p: Path) -> dict[str, Any] | str:
    """Train `settings` into `run` and score it on `val_p`, in a subprocess (its own peak RSS): the row's
    figures, or the subprocess's stderr tail where it failed."""
    code = ("import json, sys, time, resource\n"
            "from sentilora.config import Config\nfrom sentilora.train import train\nfrom sentilora.evaluate import evaluate_run\n"
            "s = json.loads(sys.argv[1]); t0 = time.perf_counter()\n"
            "r = train(Config().override(s['settings']), s['run'], progress=False)\n"
            "h = json.load(open(s['run'] + '/history.json'))\n"
            "m = evaluate_run(s['run'], data=s['val'], baseline=False)['metrics']\n"
            "print('ROW ' + json.dumps({'accuracy': m['accuracy'], 'f1': m['f1'], 'n': m['n'], 'train_s': h['train_seconds'],"
            " 'steps': h['steps'], 'epochs': len(h['epochs']), 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))\n")
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    spec = {"settings": settings, "run": str(run), "val": str(val_p)}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
    return proc.stderr[-3000:] if line is None else json.loads(line[4:])


def cell(dataset: str, per_class: int | None, seed: int, overrides: dict[str, Any], *,
         cached_only: bool = False) -> dict[str, Any] | None:
    """Train and score one cell (`train_and_score`); cached."""
    settings, out, run, val_p, val_n = cell_files(dataset, per_class, seed, overrides)
    if out.exists():
        return json.loads(out.read_text())
    if cached_only:
        return None
    figures = train_and_score(settings, run, val_p)
    if isinstance(figures, str):
        sys.exit(f"cell {run.name} {overrides} failed:\n{figures}")
    row = {"dataset": dataset, "per_class": per_class, "seed": seed, "overrides": overrides, "val_n": val_n,
           "cpu": machine_info()["cpu"], **figures}
    out.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated groups: {', '.join(GROUPS)}")
    args = ap.parse_args()
    started = utc_now()
    # Rows of variants neither run now nor cached (a fresh checkout) carry over from the results file.
    results = Path(__file__).resolve().parent / "results" / "recipes-validation.json"
    previous = {r["system"]: r for r in json.loads(results.read_text())["rows"]} if results.exists() else {}
    rows = []
    for group, (dataset, per_class, seeds, variants) in GROUPS.items():
        run_it = not args.only or group in args.only.split(",")
        for variant, overrides in variants.items():
            if not run_it and f"{group}: {variant}" in previous:
                # As written when its group last ran: a cell cached since, with the same settings, may come
                # from another machine (another CPU's arithmetic), and would mix into the row's draws.
                rows.append(previous[f"{group}: {variant}"])
                continue
            cells = []
            for seed in seeds:
                t0 = time.perf_counter()
                c = cell(dataset, per_class, seed, overrides, cached_only=not run_it)
                if c is None:
                    continue
                print(f"[{group}] {variant} seed {seed}: accuracy {c['accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
                cells.append(c)
            if cells:
                acc = [c["accuracy"] for c in cells]
                rows.append({"system": f"{group}: {variant}", "overrides": overrides, "val_n": cells[0]["val_n"],
                             "accuracy_mean": round(float(np.mean(acc)), 4),
                             "accuracy_sd": round(float(np.std(acc, ddof=1)), 4) if len(acc) > 1 else None,
                             "accuracy": [round(a, 4) for a in acc], "f1": [round(c["f1"], 4) for c in cells],
                             "train_s": [c["train_s"] for c in cells], "steps": [c["steps"] for c in cells],
                             "peak_rss_mb": max(c["peak_rss_mb"] for c in cells),
                             "cpu": sorted({c.get("cpu", "not recorded") for c in cells})})
    known = {f"{g}: {v}" for g, (_, _, _, variants) in GROUPS.items() for v in variants}
    rows += [r for name, r in previous.items() if name not in known]  # retired groups: their code is gone
    path = write_results("recipes", "validation", rows, [], "python bench/recipes.py " + " ".join(sys.argv[1:]), started)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
