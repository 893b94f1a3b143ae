"""Metrics (scikit-learn, plus ECE), evaluation of a run on a data split, the before/after comparison, the
TF-IDF baseline beside the model, and the report."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sentilora import model as M
from sentilora.baseline import fit_baseline
from sentilora.bundle import Manifest
from sentilora.calibration import calibrated_probs, decide
from sentilora.config import Config, DataConfig
from sentilora.data import Split, load_data
from sentilora.errors import ConfigError, DataError
from sentilora.files import atomic_write_json, first_line
from sentilora.metrics import compute_metrics
from sentilora.predict import Classifier, LongTexts
from sentilora.report import write_report
from sentilora.tokens import check_long_texts

log = logging.getLogger(__name__)


def eval_data_config(run_cfg: Config, *, data: str | None, split: str, text_column: str | None, label_column: str | None) -> tuple[DataConfig, str]:
    """The data settings for evaluating a run: its own data, or a file/dataset given on the command line."""
    dc = dataclasses.replace(run_cfg.data)
    if data is not None:
        dc.source = data
        dc.test_file = data if Path(data).is_file() else None
        dc.n_eval = None  # every row of the data given here (--data.n_eval subsampled the run's own, for speed)
    if text_column:
        dc.text_column = text_column
    if label_column:
        dc.label_column = label_column
    if split in ("train", "validation"):
        return dc, split
    if split != "test":  # a named split: of a folder or hub dataset (load_data names those it has), never of a file
        if Path(dc.source).expanduser().is_file():
            have = "test, validation or train" if dc.test_file else "validation or train (no test file: pass one with --data FILE)"
            raise ConfigError(f"--split {split}: {dc.source} is a single file, with no named splits; choose {have}. "
                              "Named splits are those of a --data folder or hub dataset.")
        dc.test_file = None  # the named split of the run's folder or dataset, not its test file
    if data is None or not Path(data).is_file():
        dc.test_split = split
    return dc, "test"


# load_data's hints, as `evaluate` and `calibrate` spell them: longest first, so a whole sentence wins over its flags.
_OWN_FLAGS = (
    ("Set --data.test_file to a labelled file, or --data.test_split to one of these.",
     "Pass labelled texts with --data FILE, or name one of these with --split."),
    ("Set --data.test_file to a labelled file.", "Pass labelled texts with --data FILE."),
    ("--data.text_column", "--text-column"),
    ("--data.label_column", "--label-column"),
    ("--data.source", "--data"),
)


def own_flags(message: str) -> str:
    """A load_data message with its hints naming `evaluate`'s and `calibrate`'s options instead of train's."""
    for train_hint, hint in _OWN_FLAGS:
        message = message.replace(train_hint, hint)
    return message


def load_eval_split(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    text_column: str | None = None,
    label_column: str | None = None,
    precision: str = "auto",
    max_length: int | None = None,
    role: str | None = None,
) -> tuple[Any, Split, Config]:
    """A run's Classifier, the labelled split to score it on (its own data unless `data` is set), its config.
    `role` names the texts in the log line ("validation" for calibrate's file) where not the split's own name."""
    run_dir = Path(run_dir)
    Manifest.read(run_dir)  # a clear error before anything slow
    cfg_path = run_dir / "config.yaml"
    run_cfg = Config.from_yaml(cfg_path) if cfg_path.is_file() else Config()
    if data is None and not cfg_path.is_file():
        raise DataError(f"{run_dir}: no config.yaml to tell which data it was trained on. Pass --data FILE.")
    dc, which = eval_data_config(run_cfg, data=data, split=split, text_column=text_column, label_column=label_column)
    clf = Classifier.load(run_dir, precision=precision, max_length=max_length)
    try:
        loaded = load_data(dc, need=(which,), label_names=clf.label_names, called={which: role} if role else None)
    except DataError as e:  # load_data's hints name train's --data.* flags; evaluate and calibrate take others
        raise DataError(own_flags(str(e))) from e.__cause__
    if not loaded.splits[which].labels:  # a small run holds out no validation texts (--data.min_held_out)
        if data is not None:  # the file was carved as training data is, and held nothing out
            raise DataError(f"{data}: no {split} texts: a file's are carved from its rows, and it has too few rows "
                            "to hold any out. Score every row of it with --split test.")
        raise DataError(f"{run_dir}: the run has no {split} texts (it was trained on too few rows to hold any out). "
                        "Pass labelled texts with --data FILE.")
    return clf, loaded.splits[which], run_cfg


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    text_column: str | None = None,
    label_column: str | None = None,
    precision: str = "auto",
    compare_base: bool = False,
    batch_size: int | None = None,
    progress: Any = None,
    output: str | Path | None = None,
    report: bool = False,
    report_dir: str | Path | None = None,
    base_sample: int = 2000,
    report_note: str | None = None,
    max_length: int | None = None,
    baseline: bool = True,
    long_texts: LongTexts = "truncate",
) -> dict[str, Any]:
    """Score a run bundle on a split; write metrics.json (in the run folder unless `output` is set).

    The data options are `load_eval_split`'s, passed through (a parallel signature, not shared logic).

    Predictions use the bundle's stored temperature and threshold, as every prediction path does.
    With `report`, also write report.html and its PNGs to `report_dir` (default RUN_DIR/report);
    the report's before/after scores the base model on a seeded subsample of `base_sample` rows
    (all rows with `compare_base`; 0 = no base model). `report_note` is printed under its title.
    `long_texts` reads texts past the prediction length as `predict --long-texts` does (chunk:
    overlapping windows, logits averaged), so a model is measured the way it will be used.
    With `baseline`, also fit TF-IDF + logistic regression on the run's own training texts and score
    the same split (result["baseline"]; left out, with a log line, when that data is not available).
    """
    if base_sample < 0:
        raise ConfigError("--base-sample must be 0 (no base model) or more, e.g. 2000.")
    check_long_texts(long_texts)
    run_dir = Path(run_dir)
    clf, part, run_cfg = load_eval_split(run_dir, data=data, split=split, text_column=text_column, label_column=label_column,
                                        precision=precision, max_length=max_length)
    bs = batch_size or run_cfg.eval.batch_size
    k = len(clf.label_names)
    y = np.asarray(part.labels)
    log.info("scoring %d texts from %s", len(y), part.origin)
    t0 = time.perf_counter()
    logits = clf.logits(part.texts, batch_size=bs, progress=progress, long_texts=long_texts)
    probs = calibrated_probs(logits, clf.manifest)  # exactly what Classifier.predict_proba returns
    log.info("scored %d texts in %.0fs", len(y), time.perf_counter() - t0)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": part.origin,
        "split": split,
        "label_names": clf.label_names,
        "temperature": clf.manifest.temperature,
        "threshold": clf.manifest.threshold,
        "reads": {"max_length": clf.max_length, "long_texts": long_texts},
        "metrics": compute_metrics(y, probs, n_classes=k, label_names=clf.label_names, y_pred=decide(probs, clf.manifest)),
    }
    base_rows, base_probs = None, None
    if compare_base or (report and base_sample > 0):
        base_rows = np.arange(len(y))
        if not compare_base and len(y) > base_sample:
            rng = np.random.default_rng(run_cfg.data.seed)
            base_rows = np.sort(rng.choice(len(y), size=base_sample, replace=False))
        log.info("scoring %d texts with the untuned base model", len(base_rows))
        base = base_classifier(clf.manifest, seed=run_cfg.train.seed, max_length=clf.max_length)
        base_probs = base.predict_proba([part.texts[i] for i in base_rows], batch_size=bs, progress=progress,
                                        long_texts=long_texts)
        if compare_base:
            result["base_metrics"] = compute_metrics(y, base_probs, n_classes=k, label_names=clf.label_names)
    if baseline and (fitted := baseline_result(run_dir, run_cfg, clf.label_names, part)) is not None:
        result["baseline"] = fitted | {"blended_into_model": clf.manifest.baseline_weight}
    if report:
        folder = Path(report_dir) if report_dir else run_dir / "report"
        path = write_report(folder, run_dir=run_dir, clf=clf, data_origin=part.origin, texts=part.texts, labels=y,
                            logits=logits, base_rows=base_rows, base_probs=base_probs, seed=run_cfg.data.seed,
                            note=report_note, baseline=result.get("baseline"), long_texts=long_texts)
        result["report"] = str(path)
    out = Path(output) if output else run_dir / "metrics.json"
    atomic_write_json(out, result)
    result["written_to"] = str(out)
    return result


def baseline_result(run_dir: Path, run_cfg: Config, label_names: list[str], part: Split) -> dict[str, Any] | None:
    """TF-IDF + logistic regression fitted on the texts the run was trained on, scored on `part`; None without them."""
    if not (run_dir / "config.yaml").is_file():
        log.info("no TF-IDF baseline: %s has no config.yaml to say what it was trained on", run_dir)
        return None
    # A carved validation split is carved again (same seed, same rows), so the baseline learns from
    # exactly the texts the model did, not from the held-out ones as well.
    need = ("train",) if run_cfg.data.validation_split else ("train", "validation")
    try:
        train = load_data(run_cfg.data, need=need, label_names=label_names).splits["train"]
    except DataError as e:
        log.info("no TF-IDF baseline: the run's training data is not available (%s)", first_line(e))
        return None
    log.info("fitting the TF-IDF baseline on the run's %d training texts (--no-baseline skips it)", len(train.texts))
    try:
        fitted = fit_baseline(train.texts, train.labels, n_classes=len(label_names), seed=run_cfg.train.seed)
    except ValueError as e:  # e.g. "empty vocabulary": no word of two or more letters in any text
        log.warning("no TF-IDF baseline: %s", first_line(e))
        return None
    log.info("TF-IDF baseline fitted in %.1fs", fitted.fit_seconds)
    probs = fitted.predict_proba(part.texts)
    return {"name": fitted.name, "train_n": fitted.train_n, "fit_seconds": fitted.fit_seconds,
            "metrics": compute_metrics(np.asarray(part.labels), probs, n_classes=len(label_names), label_names=label_names)}


def base_classifier(manifest: Any, *, seed: int, max_length: int | None = None) -> Any:
    """The untuned base model with a freshly initialised head (seeded): the 'before' picture, reading what the tuned model reads."""
    import torch

    torch.manual_seed(seed)
    base, _ = M.load_base_model(manifest.base_model, manifest.label_names, revision=manifest.base_revision,
                                pooling=manifest.pooling)
    tokenizer = M.load_tokenizer(manifest.base_model, revision=manifest.base_revision)
    # the base model is never calibrated or blended: the bundle's temperature, threshold and TF-IDF blend belong
    # to the tuned model
    return Classifier(base, tokenizer, dataclasses.replace(manifest, kind="base", temperature=1.0, threshold=None,
                                                           baseline_weight=0.0), max_length=max_length)


def metrics_table(result: dict[str, Any]) -> Any:
    """A rich table of the headline metrics (tuned; the base model and the TF-IDF baseline beside it when there)."""
    from rich.table import Table

    m = result["metrics"]
    others: list[tuple[str, dict[str, Any]]] = []
    if result.get("base_metrics"):
        others.append(("base (untuned)", result["base_metrics"]))
    if result.get("baseline"):
        others.append(("TF-IDF + LR", result["baseline"]["metrics"]))
    table = Table(title=f"{result['data']} — {m['n']} texts")
    table.add_column("metric")
    for name, _ in others:
        table.add_column(name, justify="right")
    table.add_column("sentilora" if others else "value", justify="right")
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "loss", "ece"):
        label = key if len(result["label_names"]) == 2 or key in ("accuracy", "roc_auc", "loss", "ece") else f"{key} (macro)"
        table.add_row(label, *(_fmt(o.get(key)) for _, o in others), _fmt(m.get(key)))
    return table


def confusion_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    names = result["label_names"]
    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")
    for n, row in zip(names, result["metrics"]["confusion_matrix"]):
        table.add_row(n, *map(str, row))
    return table


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"
