"""`--preset auto` (the default): settings left unset are chosen from the training data.

One table, measured on validation data (bench/recipes.py on a CPU, bench/recipes_gpu.py on a lent
GPU; README: 'Which setting for which data'). Only the settings a user leaves unset are filled in:
a flag or a YAML key always wins, and each setting is decided on its own, so `--train.epochs 4`
on SST-5 keeps the rest of the short-text recipe.

| training data                                       | LoRA on      | rank | lr   | epochs |
| --------------------------------------------------- | ------------ | ---- | ---- | ------ |
| MANY_TEXTS+ texts, median <= SHORT_TOKENS tokens     | every linear | 16   | 1e-3 | 2      |
| anything else (tuned on 1,000 IMDB reviews)         | query, value | 8    | 2e-3 | 6      |

--model.max_length left unset is LONG_READ tokens (or the encoder's limit, if less) for fewer than
FEW_LONG_TEXTS texts of median over SHORT_TOKENS tokens whose classes are not too small for training
alone (sentilora.contrastive.small_classes: 40 or more texts in each), else STANDARD_READ: a few long
texts are worth reading further, and the cost stays small. Where the classes are smaller the
contrastive stage runs, and 512 tokens made it 4x slower for no gain.

--train.baseline_blend auto is on (the TF-IDF baseline mixed in at a weight chosen on validation) for
the short-text row with BLEND_MIN_HELD_OUT or more validation texts, else off. --train.ensemble left
unset is ENSEMBLE models for the short-text row with ENSEMBLE_MIN_TEXTS or more texts (unless --train.soup
is given), else 1.

--train.class_name_texts left unset is CLASS_NAME_TEXTS (texts such as "This sentence is neutral" added to
the training split) where the contrastive stage runs and the class names are words, not ids; else 0.

--lora.alpha left unset is twice the rank. --train.ordinal_smoothing left unset is ORDINAL_SMOOTHING
for fewer than MANY_TEXTS short texts whose classes lie on the sentiment scale in its order (3 or more
of "very negative" .. "very positive"), else 0. The small-data rules (a contrastive stage under 40
texts per class, the --train.min_steps floor, no hold-out under 1,000 rows) live with the code they
steer: sentilora.contrastive.auto_steps, sentilora.train and sentilora.data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sentilora.config import Config
from sentilora.contrastive import small_classes
from sentilora.labels import are_words, on_sentiment_scale

SHORT_TOKENS = 64  # median tokens per training text: SST sentences are ~25, IMDB reviews ~230
# Training texts (after the validation carve-out). bench/recipes.py's *-short-recipe groups, validation
# accuracy of this row minus the standard row: SST-5 +2.7 points at 7,690 texts (full), +7.4 at 1,800, +3.2
# at 1,152 (256 per class); SST-2 +1.1 at 6,228 (full), +0.5 at 1,800; but SST-2 -0.7 at 512 and SST-5
# -1.4 at 320 and SST-2 -2.8 at 128 (64 per class), where the 200-step floor stretches 2 epochs to 10.
MANY_TEXTS = 1_000
# bench/recipes.py's *-length groups, validation accuracy at 512 training tokens against 256 (3 draws each):
# IMDB at 64 per class 0.820 / 0.810, P3 at 64 per class 0.495 / 0.484, every P3 draw higher; 2.5-3.5x the
# training time (IMDB 210-240 s against 85-100 s). P3 at 16 per class (contrastive stage): 0.429 / 0.429 on
# one draw, in 4x the time. IMDB at 256 per class (512 texts) 0.872 / 0.861, every draw higher, 2.5x the time.
# P3 at 256 per class (922 texts after the carve-out) is not measured, so the line is drawn under it.
FEW_LONG_TEXTS = 600
LONG_READ = 512
STANDARD_READ = 256


@dataclass(frozen=True)
class Recipe:
    name: str
    targets: str | None  # a --lora.target_modules preset; None: the architecture's default (query, value)
    r: int
    lr: float
    epochs: int


STANDARD = Recipe("standard", None, 8, 2e-3, 6)  # tuned on 1,000 IMDB reviews (P1)
# Full SST-5 validation 0.497 against 0.461 for the standard row on a GPU (bench/recipes_gpu.py); at lr 2e-3
# one of two draws diverged, and a third epoch lost 2 points.
MANY_SHORT = Recipe("many short texts", "all", 16, 1e-3, 2)
# bench/recipes.py's *-ordinal groups, validation accuracy (macro-F1) with 0.2 against 0: SST-5 at 16 per
# class 0.339 (0.326) / 0.324 (0.325), 5 draws, every one higher; at 64 per class 0.383 (0.376) / 0.369
# (0.373), 3 draws. 0.4 scored more accuracy (0.353, 0.391) but less macro-F1 (0.303, 0.368): it moves
# answers from the end classes to the more frequent middle ones. Off where it lost: full SST-5 (0.484 at
# 0.2, 0.470 at 0.4, against 0.486) and long reviews (P3 at 16 per class: 0.410 at 0.2 against 0.428).
ORDINAL_SMOOTHING = 0.2
# bench/recipes.py's *-full-blend groups, validation accuracy with the blend (weight by log-loss on the run's
# 10% carve-out, 692 and 855 texts) against the model alone, 3 draws each: SST-2 0.885 / 0.880 (every draw
# higher), SST-5 0.497 / 0.496 (one lower). At 16 per class there is no held-out set to weigh by, and a fixed
# weight only lost (a probe on the sst5-16-precision bundles, 10 draws: 0.3425 at 0.1, 0.3419 at 0.2, against 0.3433). Long texts are not measured.
BLEND_MIN_HELD_OUT = 500
# bench/recipes.py's sst2-full-ensemble and sst5-full-ensemble groups, validation accuracy of 3 models whose
# probabilities are averaged against one: SST-2 0.888 / 0.880 (3 draws, every one higher; with the TF-IDF blend on
# both, sst2-full-ensemble-blend, 0.889 / 0.885, every draw higher); SST-5 0.495 / 0.486 over 6 draws (0.491 / 0.496 on the first 3, then
# 0.499 / 0.477 on 3 more: one model's draws spread from 0.462 to 0.502, the ensemble's from 0.489 to 0.502).
# With the TF-IDF blend on both (a probe applying baseline.py to the same bundles): SST-5 0.496 / 0.489. On test
# (bench/suite.py's default rows, with the blend): SST-2 0.897 against 0.885, SST-5 0.526 against 0.511.
# It costs 3x the training (SST-2: 425-460 s against 115-125 s on 2 CPU cores, SST-5 535-582 s against
# 183-208 s) and 3x the prediction. Measured on the full data sets only (6,228 and 7,690 training texts):
# the rule starts at 5,000, under both, and no lower (256 per class on SST-5, 1,152 texts, keeps one model).
ENSEMBLE = 3
ENSEMBLE_MIN_TEXTS = 5_000
# bench/class_name_texts.py and bench/recipes.py's *-class-names groups, validation accuracy with 2 texts per class
# made from the class names against none, where the contrastive stage runs (16 per class): SST-5 0.363 / 0.343 (9 of
# 10 draws higher; macro-F1 0.352 / 0.328), SST-2 0.737 / 0.723 (4 of 5), P3 0.434 / 0.429 (2 of 3), IMDB 0.761 / 0.691
# (5 of 5; macro-F1 0.760 / 0.662).
# On test (bench/suite.py's default rows against its {"train.class_name_texts": 0} rows, 3 draws; SetFit's rows, same draws):
# SST-5 0.364 / 0.337 (SetFit 0.341), P3 0.457 / 0.429 (0.431), IMDB 0.702 / 0.683 (0.671), SST-2 0.719 / 0.711 (0.688).
CLASS_NAME_TEXTS = 2


def choose(lengths: Sequence[int]) -> Recipe:
    """The table's row for training texts of these token lengths."""
    if len(lengths) >= MANY_TEXTS and float(np.median(lengths)) <= SHORT_TOKENS:
        return MANY_SHORT
    return STANDARD


def ordinal_smoothing(lengths: Sequence[int], label_names: list[str]) -> float:
    """--train.ordinal_smoothing's value when unset: ORDINAL_SMOOTHING for a few short texts on the sentiment scale."""
    few_short = len(lengths) < MANY_TEXTS and float(np.median(lengths)) <= SHORT_TOKENS
    return ORDINAL_SMOOTHING if few_short and on_sentiment_scale(label_names) else 0.0


def max_length(lengths: Sequence[int], small: bool, positions: int | None = None) -> int:
    """--model.max_length's value when unset: LONG_READ for a few long texts, else STANDARD_READ (at most
    `positions`). `small`: the classes are small enough for the contrastive stage (`small_classes`)."""
    few_long = len(lengths) < FEW_LONG_TEXTS and not small and float(np.median(lengths)) > SHORT_TOKENS
    n = LONG_READ if few_long else STANDARD_READ
    return min(n, positions) if positions else n


def baseline_blend(recipe: Recipe, held_out: int) -> str:
    """--train.baseline_blend auto's value: "on" for the short-text row with BLEND_MIN_HELD_OUT+ validation texts."""
    return "on" if recipe is MANY_SHORT and held_out >= BLEND_MIN_HELD_OUT else "off"


def ensemble(recipe: Recipe, texts: int, soup: int) -> int:
    """--train.ensemble's value when unset: ENSEMBLE for the short-text row with ENSEMBLE_MIN_TEXTS+ training
    texts (without --train.soup), else 1."""
    return ENSEMBLE if recipe is MANY_SHORT and texts >= ENSEMBLE_MIN_TEXTS and soup == 1 else 1


def class_name_texts(labels: Sequence[int], label_names: list[str], contrastive_steps: int | None) -> int:
    """--train.class_name_texts's value when unset: CLASS_NAME_TEXTS where the class names are words
    (`are_words`) and the contrastive stage runs on the training labels with those texts added
    (`small_classes`, unless --train.contrastive_steps 0), else 0."""
    added = [i for i in range(len(label_names)) for _ in range(CLASS_NAME_TEXTS)]
    runs = contrastive_steps != 0 and small_classes([*labels, *added])
    return CLASS_NAME_TEXTS if runs and are_words(label_names) else 0


def resolve(cfg: Config, lengths: Sequence[int], label_names: list[str], *,
            has_presets: bool = True, positions: int | None = None,
            labels: Sequence[int] | None = None, held_out: int = 0) -> tuple[Config, Recipe]:
    """`cfg` with every unset recipe setting filled from `choose(lengths)` (and the class names), and the
    row used. `lengths`: the training texts' whole token lengths; `labels`: their classes (None: as if
    every class were large). `has_presets`: whether the architecture defines the named
    --lora.target_modules sets (else its default targets stay). `positions`: the encoder's limit on
    tokens per text. `held_out`: the number of validation texts."""
    recipe = choose(lengths)
    lora, train, model = cfg.lora, cfg.train, cfg.model
    if model.max_length is None:
        small = labels is not None and small_classes(labels)
        model = dataclasses.replace(model, max_length=max_length(lengths, small, positions))
    r = lora.r if lora.r is not None else recipe.r
    targets = lora.target_modules or ([recipe.targets] if recipe.targets and has_presets else None)
    lora = dataclasses.replace(lora, r=r, alpha=lora.alpha if lora.alpha is not None else 2 * r, target_modules=targets)
    train = dataclasses.replace(train, lr=train.lr if train.lr is not None else recipe.lr,
                                epochs=train.epochs if train.epochs is not None else recipe.epochs,
                                ordinal_smoothing=(train.ordinal_smoothing if train.ordinal_smoothing is not None
                                                   else ordinal_smoothing(lengths, label_names)),
                                baseline_blend=(train.baseline_blend if train.baseline_blend != "auto"
                                                else baseline_blend(recipe, held_out)),
                                ensemble=(train.ensemble if train.ensemble is not None
                                          else ensemble(recipe, len(lengths), train.soup)),
                                class_name_texts=(train.class_name_texts if train.class_name_texts is not None
                                                  else 0 if labels is None
                                                  else class_name_texts(labels, label_names, train.contrastive_steps)))
    return dataclasses.replace(cfg, model=model, lora=lora, train=train), recipe


def describe(cfg: Config) -> str:
    """The recipe settings of a resolved `cfg`, for a log line."""
    lora, train = cfg.lora, cfg.train
    where = ",".join(lora.target_modules) if lora.target_modules else "the architecture's default layers"
    ordinal = f", ordinal smoothing {train.ordinal_smoothing:g}" if train.ordinal_smoothing else ""
    several = f", {train.soup} models averaged (--train.soup)" if train.soup > 1 else ""
    if (train.ensemble or 1) > 1:
        several = f", {train.ensemble} models whose probabilities are averaged (--train.ensemble)"
    kind = "DoRA" if lora.dora else "LoRA"
    blend = ", the TF-IDF baseline mixed in at a weight chosen on validation" if train.baseline_blend == "on" else ""
    names = f", {train.class_name_texts} texts per class made from its name" if train.class_name_texts else ""
    return (f"{kind} r{lora.r} (alpha {lora.alpha}) on {where}, lr {train.lr:g}, {train.epochs} epochs{ordinal}, "
            f"{cfg.model.max_length} tokens per text{several}{blend}{names}")
