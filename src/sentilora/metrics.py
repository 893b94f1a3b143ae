"""Scores from labels and probabilities: scikit-learn's metrics, plus ECE and bootstrap intervals.

Pure functions of numpy arrays: training (validation), evaluation, calibration and the report all
compute their numbers here, so a number means the same thing wherever it is shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
N_BOOT = 1000  # bootstrap resamples for the report's confidence intervals


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, *, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label confidence in equal-width bins over [0, 1]: count, mean confidence and accuracy per bin."""
    y_true = np.asarray(y_true)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    # bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 joins the first bin
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, *, n_bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): |accuracy - mean confidence| per equal-width confidence bin, weighted by rows.

    Uses the top-label (argmax) confidence and 15 bins over [0, 1], the usual setting; 0 is perfect.
    scikit-learn has no ECE, hence this function.
    """
    r = reliability_bins(y_true, probs, n_bins=n_bins)
    used = r["count"] > 0
    gaps = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((gaps * r["count"][used]).sum() / max(int(r["count"].sum()), 1))


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    n_classes: int,
    label_names: list[str] | None = None,
    y_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC-AUC, log-loss, ECE and the confusion matrix.

    Binary tasks report precision/recall/F1 of class 1; multi-class tasks report macro averages
    plus a per-class breakdown. `y_pred` defaults to the argmax of `probs` (pass
    `calibrate.decide(...)` to apply a stored threshold); log-loss, ROC-AUC and ECE use `probs`.
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
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
        "ece": expected_calibration_error(y_true, probs),
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


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int, n_boot: int = N_BOOT,
                 level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for accuracy and F1 (of class 1 if binary, else macro), rows resampled."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n, k = len(y_true), n_classes
    codes = y_true * k + y_pred  # one confusion-matrix cell per row
    rng = np.random.default_rng(seed)
    # kept over scipy.stats.bootstrap: same intervals, but 25,000 rows x 1000 took 0.51 s paired (0.20 s on codes, batched) vs 0.15 s
    acc, f1 = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        cm = np.bincount(codes[rng.integers(0, n, n)], minlength=k * k).reshape(k, k)
        tp = np.diag(cm).astype(np.float64)
        denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2tp + fp + fn
        f1s = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
        acc[b], f1[b] = tp.sum() / n, (f1s[1] if k == 2 else f1s.mean())
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"accuracy": tuple(map(float, np.percentile(acc, q))), "f1": tuple(map(float, np.percentile(f1, q)))}
