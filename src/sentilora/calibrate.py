"""Temperature scaling and decision thresholds, fitted on held-out data and stored in the bundle.

Every prediction path turns logits into probabilities with `calibrated_probs` and probabilities
into label indices with `decide`; both read the bundle's manifest, so a calibrated bundle predicts
the same way from the CLI, the Python API, the server and exports.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar T > 0 fitted to minimise the negative log-likelihood on validation data. It
changes how confident the model is, never which class has the highest probability. A binary
decision threshold then moves the cut on the calibrated P(class 1) away from 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from sentilora.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from sentilora.model import Manifest

log = logging.getLogger(__name__)

CALIBRATION = "calibration.json"  # written into the run folder by `calibrate_run`
ThresholdMetric = Literal["none", "f1", "precision_at_recall"]
_T_RANGE = (0.05, 20.0)  # temperatures outside this mean the validation data is unusable, not a sharper fit


def calibrated_probs(logits: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Class probabilities softmax(logits / T) with the bundle's temperature. (n, n_labels)"""
    from scipy.special import softmax

    logits = np.asarray(logits)
    return softmax(logits / np.asarray(manifest.temperature, dtype=logits.dtype), axis=1)


def decide(probs: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Label indices: the argmax, or for a binary bundle with a threshold, P(class 1) >= threshold. (n,)"""
    probs = np.asarray(probs)
    if manifest.threshold is None:
        return probs.argmax(axis=1)
    if probs.shape[1] != 2:
        raise BundleError(
            f"the bundle stores a decision threshold ({manifest.threshold}) but has {probs.shape[1]} classes; "
            "thresholds are for binary tasks. Re-run `sentilora calibrate` without --threshold."
        )
    return (probs[:, 1] >= manifest.threshold).astype(np.int64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / temperature)."""
    from scipy.special import log_softmax

    z = np.asarray(logits, dtype=np.float64) / temperature
    return float(-log_softmax(z, axis=1)[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) on these labels."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ConfigError("no rows to calibrate on. Pass a labelled validation file with --data.")
    if len(labels) < 100:
        warnings.warn(f"fitting a temperature on only {len(labels)} rows; it will be noisy. Use a few hundred or more.",
                      stacklevel=2)
    # The NLL is convex in 1/T, so it has one minimum in log T: a bounded scalar search finds it.
    lo, hi = (math.log(t) for t in _T_RANGE)
    res = minimize_scalar(lambda s: nll(logits, labels, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-5})
    t = float(math.exp(res.x))
    return t if nll(logits, labels, t) <= nll(logits, labels, 1.0) else 1.0


def choose_threshold(p1: np.ndarray, labels: np.ndarray, *, metric: Literal["f1", "precision_at_recall"],
                     min_recall: float | None = None) -> float:
    """The cut on P(class 1) that maximises F1, or precision among cuts keeping recall >= min_recall.

    The threshold returned lies halfway between two neighbouring validation scores, so the
    validation predictions it was chosen on are reproduced exactly and new scores are cut fairly.
    """
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ConfigError("choosing a threshold needs both classes in the validation data; pass a file with both.")
    precision, recall, cuts = precision_recall_curve(labels, p1)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no cut
    if metric == "f1":
        score = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    elif metric == "precision_at_recall":
        if min_recall is None or not 0.0 < min_recall <= 1.0:
            raise ConfigError("--threshold precision-at-recall needs --min-recall between 0 and 1, e.g. 0.9.")
        score = np.where(recall >= min_recall - 1e-12, precision, -1.0)
    else:
        raise ConfigError(f"unknown threshold metric '{metric}'; choose f1 or precision-at-recall.")
    i = int(np.argmax(score))  # first best = the lowest cut among ties = the highest recall
    below = p1[p1 < cuts[i]]
    return float((cuts[i] + below.max()) / 2) if len(below) else float(cuts[i])


def calibrate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    threshold: ThresholdMetric = "none",
    min_recall: float | None = None,
    batch_size: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Fit a temperature (and optionally a binary threshold) on validation data; store them in the bundle.

    Without `data` it uses the run's own validation split; with a file, every row of it; with a
    folder or hub dataset, its validation split (or a carve-out of its train split) unless `split` says.
    A new calibration replaces the old one (the fit always starts from the raw logits).
    """
    from sentilora.evaluate import compute_metrics, load_eval_split
    from sentilora.model import atomic_write_text

    run_dir = Path(run_dir)
    if split is None:  # a file is used whole ("test" of a one-file source); anything else by its validation split
        split = "test" if data is not None and Path(data).is_file() else "validation"
    if min_recall is not None and threshold != "precision_at_recall":
        raise ConfigError("--min-recall applies only with --threshold precision-at-recall; add that or drop --min-recall.")
    clf, part, run_cfg = load_eval_split(run_dir, data=data, split=split, text_column=text_column, label_column=label_column)
    bs = batch_size or run_cfg.eval.batch_size
    k = len(clf.label_names)
    if threshold != "none" and k != 2:
        raise ConfigError(f"--threshold is for binary tasks; this model has {k} classes. Drop --threshold.")
    y = np.asarray(part.labels)
    log.info("calibrating on %d texts from %s", len(y), part.origin)
    logits = clf.logits(part.texts, batch_size=bs, progress=progress)  # raw: the fit starts from T = 1
    t = fit_temperature(logits, y)
    raw = dataclasses.replace(clf.manifest, temperature=1.0, threshold=None)
    scaled = dataclasses.replace(raw, temperature=t)
    probs = calibrated_probs(logits, scaled)
    thr = None if threshold == "none" else choose_threshold(probs[:, 1], y, metric=threshold, min_recall=min_recall)
    final = dataclasses.replace(scaled, threshold=thr)

    def metrics(m: Manifest) -> dict[str, Any]:
        p = calibrated_probs(logits, m)
        out = compute_metrics(y, p, n_classes=k, label_names=clf.label_names, y_pred=decide(p, m))
        return {key: out[key] for key in ("accuracy", "precision", "recall", "f1", "loss", "ece")}

    result = {
        "data": part.origin,
        "n": len(y),
        "temperature": t,
        "threshold": thr,
        "threshold_metric": threshold,
        "min_recall": min_recall if threshold == "precision_at_recall" else None,
        "before": metrics(raw),
        "after": metrics(final),
    }
    final.save(run_dir)  # the manifest is what every prediction path reads
    atomic_write_text(run_dir / CALIBRATION, json.dumps(result, indent=2) + "\n")
    log.info("temperature %.4f, threshold %s; NLL %.4f -> %.4f, ECE %.4f -> %.4f", t, thr,
             result["before"]["loss"], result["after"]["loss"], result["before"]["ece"], result["after"]["ece"])
    result["written_to"] = str(run_dir / CALIBRATION)
    return result
