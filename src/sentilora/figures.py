"""The report's figures, drawn with matplotlib's object API (`Figure`, rendered by the Agg canvas).

No pyplot state and no display needed. Each `fig_*` takes arrays the report already computed
and returns a `Figure` (or None when there is nothing to draw); `report.py` captions them and
puts them on the page.
"""

from __future__ import annotations

import io
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from sentilora.metrics import expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": True, "legend.framealpha": 0.9,
         "legend.edgecolor": "none", "legend.fontsize": 8}
C_RAW, C_CAL, C_BASE = "#9aa5b1", "#1f6fb2", "#c0504d"
DPI = 110


def styled() -> AbstractContextManager[Any]:
    """Draw inside this block to get the report's look without touching global rcParams."""
    import matplotlib

    return matplotlib.rc_context(STYLE)


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(w: float = 5.6, h: float = 3.9) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def fig_confusion(cm: np.ndarray, names: list[str]) -> Figure:
    """Confusion matrix, each cell as a count and as a share of its true class."""
    fig = _figure(4.6, 3.9)
    ax = fig.subplots()
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:,}\n{rows[i, j]:.1%}", ha="center", va="center", color="white" if rows[i, j] > 0.6 else "black")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title="Confusion matrix (share of each true class)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def fig_roc_pr(y: np.ndarray, probs: np.ndarray, names: list[str], y_pred: np.ndarray) -> Figure:
    """ROC and precision–recall curves (one vs rest if multi-class); binary: the decision rule as a dot."""
    from sklearn import metrics as skm

    fig = _figure(8.4, 3.7)
    roc, pr = fig.subplots(1, 2)
    binary = len(names) == 2
    for c in ([1] if binary else range(len(names))):
        if not (y == c).any() or (y == c).all():
            continue
        fpr, tpr, _ = skm.roc_curve(y == c, probs[:, c])
        prec, rec, _ = skm.precision_recall_curve(y == c, probs[:, c])
        tag = "" if binary else f"{names[c]}: "
        roc.plot(fpr, tpr, label=f"{tag}AUC {skm.auc(fpr, tpr):.3f}")
        pr.plot(rec, prec, label=f"{tag}AP {skm.average_precision_score(y == c, probs[:, c]):.3f}")
    if binary:  # where the deployed decision rule sits on both curves
        tn, fp, fn, tp = skm.confusion_matrix(y, y_pred, labels=[0, 1]).ravel()
        roc.plot(fp / max(fp + tn, 1), tp / max(tp + fn, 1), "o", color="black", label="decision rule")
        pr.plot(tp / max(tp + fn, 1), tp / max(tp + fp, 1), "o", color="black", label="decision rule")
        pr.axhline((y == 1).mean(), ls=":", color="grey", lw=1, label="chance")
    roc.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve" + ("" if binary else "s (one vs rest)"))
    pr.set(xlabel="recall", ylabel="precision", title="Precision–recall curve" + ("" if binary else "s"), ylim=(0, 1.02))
    roc.legend(loc="lower right")
    pr.legend(loc="lower left")
    return fig


def fig_reliability(y: np.ndarray, raw: np.ndarray, cal: np.ndarray | None, k: int) -> Figure:
    """Reliability diagram of the raw and (if given) temperature-scaled probabilities, rows per bin below."""
    fig = _figure(4.8, 4.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    series = [("raw (T = 1)", raw, C_RAW)] + ([("temperature-scaled", cal, C_CAL)] if cal is not None else [])
    for name, p, color in series:
        r = reliability_bins(y, p)
        used = r["count"] > 0
        top.plot(r["confidence"][used], r["accuracy"][used], "o-", color=color, ms=4,
                 label=f"{name}: ECE {expected_calibration_error(y, p):.4f}")
    r = reliability_bins(y, series[-1][1])
    bottom.bar(r["edges"][:-1], r["count"], width=np.diff(r["edges"]), align="edge", color=series[-1][2], alpha=0.7)
    lo = 1.0 / k
    top.set(xlim=(lo - 0.02, 1.01), ylim=(0, 1.02), ylabel="accuracy", title="Reliability diagram (15 equal-width bins)")
    bottom.set(xlabel="confidence (top-class probability)", ylabel="rows")
    top.legend(loc="upper left")
    return fig


def fig_scores(y: np.ndarray, probs: np.ndarray, names: list[str], threshold: float | None) -> Figure:
    """Histograms of the scores by true class, with the binary decision threshold."""
    bins = np.linspace(0, 1, 41)
    if len(names) == 2:
        fig = _figure(5.2, 3.7)
        ax = fig.subplots()
        for c, color in ((0, C_BASE), (1, C_CAL)):
            ax.hist(probs[y == c, 1], bins=bins, alpha=0.55, color=color, label=f"true {names[c]} ({(y == c).sum():,})")
        rule = "argmax (0.5)" if threshold is None else f"decision threshold {threshold:.3f}"
        ax.axvline(0.5 if threshold is None else threshold, color="black", ls="--", lw=1, label=rule)
        ax.set(xlabel=f"P({names[1]})", ylabel="rows", title="Scores by true class")
        ax.legend(loc="upper center")
        return fig
    cols = min(len(names), 4)
    fig = _figure(2.4 * cols, 2.2 * -(-len(names) // cols))
    axes = np.atleast_1d(fig.subplots(-(-len(names) // cols), cols, squeeze=False)).ravel()
    for c, ax in enumerate(axes):
        if c >= len(names):
            ax.set_visible(False)
            continue
        ax.hist(probs[y == c, c], bins=bins, color=C_CAL, alpha=0.7)
        ax.set(title=f"true {names[c]}", xlabel=f"P({names[c]})")
    fig.suptitle("Probability of the true class, by true class")
    return fig


def fig_training(history: dict[str, Any] | None, steps: list[dict[str, Any]]) -> Figure | None:
    """Training loss per step and validation metrics per epoch; None without history or step log.

    A run that held no validation texts out logs epochs without scores ({"epoch", "step"} only): the
    figure then shows the training loss alone."""
    epochs = [h for h in (history or {}).get("epochs", []) if "loss" in h]
    if not epochs and not steps:
        return None
    fig = _figure(8.4, 3.5) if epochs else _figure(5.6, 3.5)
    loss_ax, metric_ax = fig.subplots(1, 2) if epochs else (fig.subplots(), None)
    if steps:
        s = np.array([r["step"] for r in steps])
        v = np.array([r["loss"] for r in steps])
        loss_ax.plot(s, v, color=C_RAW, lw=0.7, label="train loss per step")
        for e in sorted({r["epoch"] for r in steps}):
            m = np.array([r["epoch"] == e for r in steps])
            loss_ax.plot([s[m].min(), s[m].max()], [v[m].mean()] * 2, color=C_CAL, lw=2,
                         label="train loss, epoch mean" if e == 1 else None)
    if epochs:
        loss_ax.plot([h["step"] for h in epochs], [h["loss"] for h in epochs], "o-", color=C_BASE, label="validation loss")
        x = [h["epoch"] for h in epochs]
        for key, color in (("accuracy", C_CAL), ("f1", C_BASE)):
            if all(key in h for h in epochs):
                metric_ax.plot(x, [h[key] for h in epochs], "o-", color=color, label=f"validation {key}")
        best = history.get("best_epoch")
        if best:
            metric_ax.axvline(best, color="black", ls="--", lw=1, label=f"best epoch ({best}, kept)")
        metric_ax.set_xticks(x)
        metric_ax.set(xlabel="epoch", title="Validation metrics per epoch")
        metric_ax.legend(loc="lower right")
    loss_ax.set(xlabel="optimiser step", ylabel="loss", title="Training loss")
    loss_ax.legend()
    return fig


def fig_length(bucket: np.ndarray, names: list[str], correct: np.ndarray, max_length: int) -> Figure:
    """Accuracy per text-length bucket, truncated buckets in red."""
    fig = _figure(5.6, 3.6)
    ax = fig.subplots()
    used = [b for b in range(len(names)) if (bucket == b).any()]
    acc = [correct[bucket == b].mean() for b in used]
    bars = ax.bar(range(len(used)), acc, color=[C_CAL if b < 3 else C_BASE for b in used])
    for bar, b, a in zip(bars, used, acc):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"{a:.3f}\nn={(bucket == b).sum():,}",
                ha="center", fontsize=8)
    ax.set_xticks(range(len(used)), [names[b] for b in used])
    ax.set(ylim=(min(0.5, min(acc) - 0.05), 1.08), xlabel="tokens per text (blue: fits in the model, "
           f"red: truncated to {max_length})", ylabel="accuracy", title="Accuracy by text length")
    ax.grid(axis="x", visible=False)
    return fig
