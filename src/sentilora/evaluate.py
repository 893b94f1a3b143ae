"""Metrics (scikit-learn), evaluation of a run on a data split, and the before/after comparison."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sentilora.config import Config, DataConfig
from sentilora.errors import DataError

log = logging.getLogger(__name__)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, *, n_classes: int, label_names: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC-AUC, log-loss and the confusion matrix.

    Binary tasks report precision/recall/F1 of class 1; multi-class tasks report macro averages
    plus a per-class breakdown.
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))
    binary = n_classes == 2
    avg = "binary" if binary else "macro"
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=None if binary else labels, average=avg, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "loss": float(skm.log_loss(y_true, np.clip(probs, 1e-7, 1.0), labels=labels)),
    }
    present = set(np.unique(y_true).tolist())
    if len(present) == n_classes:
        out["roc_auc"] = float(
            skm.roc_auc_score(y_true, probs[:, 1]) if binary else skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels)
        )
    else:
        out["roc_auc"] = None  # undefined when some class is absent from the data
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if not binary:
        names = label_names or [str(i) for i in labels]
        pc, rc, fc, sc = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        out["per_class"] = {
            names[i]: {"precision": float(pc[i]), "recall": float(rc[i]), "f1": float(fc[i]), "support": int(sc[i])}
            for i in labels
        }
    return out


def eval_data_config(run_cfg: Config, *, data: str | None, split: str, text_column: str | None, label_column: str | None) -> tuple[DataConfig, str]:
    """The data settings for evaluating a run: its own data, or a file/dataset given on the command line."""
    dc = dataclasses.replace(run_cfg.data)
    if data is not None:
        dc.source = data
        dc.test_file = data if Path(data).is_file() else None
    if text_column:
        dc.text_column = text_column
    if label_column:
        dc.label_column = label_column
    if split in ("train", "validation"):
        return dc, split
    if data is None or not Path(data).is_file():
        dc.test_split = split
    return dc, "test"


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    text_column: str | None = None,
    label_column: str | None = None,
    compare_base: bool = False,
    batch_size: int | None = None,
    progress: Any = None,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Score a run bundle on a split; write metrics.json (in the run folder unless `output` is set)."""
    from sentilora.data import load_data
    from sentilora.model import Manifest, atomic_write_text
    from sentilora.predict import Classifier

    run_dir = Path(run_dir)
    Manifest.read(run_dir)  # a clear error before anything slow
    cfg_path = run_dir / "config.yaml"
    run_cfg = Config.from_yaml(cfg_path) if cfg_path.is_file() else Config()
    if data is None and not cfg_path.is_file():
        raise DataError(f"{run_dir}: no config.yaml to tell which data it was trained on. Pass --data FILE.")
    dc, which = eval_data_config(run_cfg, data=data, split=split, text_column=text_column, label_column=label_column)
    clf = Classifier.load(run_dir)
    loaded = load_data(dc, need=(which,), label_names=clf.label_names)
    part = loaded.splits[which]
    bs = batch_size or run_cfg.eval.batch_size
    k = len(clf.label_names)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": part.origin,
        "split": split,
        "label_names": clf.label_names,
        "metrics": compute_metrics(np.asarray(part.labels), clf.predict_proba(part.texts, batch_size=bs, progress=progress), n_classes=k, label_names=clf.label_names),
    }
    if compare_base:
        base = base_classifier(clf.manifest, seed=run_cfg.train.seed)
        probs = base.predict_proba(part.texts, batch_size=bs, progress=progress)
        result["base_metrics"] = compute_metrics(np.asarray(part.labels), probs, n_classes=k, label_names=clf.label_names)
    out = Path(output) if output else run_dir / "metrics.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    result["written_to"] = str(out)
    return result


def base_classifier(manifest: Any, *, seed: int) -> Any:
    """The untuned base model with a freshly initialised head (seeded): the 'before' picture."""
    import torch

    from sentilora import model as M
    from sentilora.predict import Classifier

    torch.manual_seed(seed)
    base, _ = M.load_base_model(manifest.base_model, manifest.label_names, revision=manifest.base_revision)
    tokenizer = M.load_tokenizer(manifest.base_model, revision=manifest.base_revision)
    return Classifier(base, tokenizer, dataclasses.replace(manifest, kind="base"))


def metrics_table(result: dict[str, Any]) -> Any:
    """A rich table of the headline metrics (tuned, and base beside it when compared)."""
    from rich.table import Table

    m, b = result["metrics"], result.get("base_metrics")
    table = Table(title=f"{result['data']} — {m['n']} texts")
    table.add_column("metric")
    if b:
        table.add_column("base (untuned)", justify="right")
    table.add_column("sentilora" if b else "value", justify="right")
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "loss"):
        label = key if len(result["label_names"]) == 2 or key in ("accuracy", "roc_auc", "loss") else f"{key} (macro)"
        cells = [_fmt(b.get(key))] if b else []
        table.add_row(label, *cells, _fmt(m.get(key)))
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
