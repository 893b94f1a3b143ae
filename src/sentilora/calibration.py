"""Calibration maths: temperature scaling and binary decision thresholds, applied and fitted.

Every prediction path turns logits into probabilities with `calibrated_probs` and probabilities
into label indices with `decide`; both read the bundle's manifest (its `temperature` and
`threshold`), so a calibrated bundle predicts the same way from the CLI, the Python API, the server
and exports. `sentilora.calibrate` is the job that fits them on validation data.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar T > 0 fitted to minimise the negative log-likelihood on validation data. It
changes how confident the model is, never which class has the highest probability. A binary
decision threshold then moves the cut on the calibrated P(class 1) away from 0.5.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, Protocol

import numpy as np

from sentilora.errors import BundleError, ConfigError

CALIBRATION = "calibration.json"  # written into the run folder by `sentilora calibrate`
_T_RANGE = (0.05, 20.0)  # temperatures outside this mean the validation data is unusable, not a sharper fit


class Calibrated(Protocol):
    """What the maths needs of a bundle's manifest."""

    temperature: float
    threshold: float | None


def calibrated_probs(logits: np.ndarray, manifest: Calibrated) -> np.ndarray:
    """Class probabilities softmax(logits / T) with the bundle's temperature. (n, n_labels)"""
    from scipy.special import softmax

    logits = np.asarray(logits)
    return softmax(logits / np.asarray(manifest.temperature, dtype=logits.dtype), axis=1)


def decide(probs: np.ndarray, manifest: Calibrated) -> np.ndarray:
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
