"""The evaluation report: one self-contained HTML page (PNGs inline) with the same PNGs beside it.

Headline metrics with bootstrap confidence intervals, calibration (ECE before/after temperature
scaling, reliability diagram), the untuned base model against the tuned one, plots, and error
analysis. Figures are drawn with matplotlib's object API (`Figure`, rendered by the Agg canvas):
no pyplot state and no display needed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sentilora.calibration import CALIBRATION, calibrated_probs, decide
from sentilora.files import atomic_write_json, atomic_write_text
from sentilora.tokens import special_tokens
from sentilora.metrics import N_BOOT, bootstrap_ci, compute_metrics, expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sentilora.predict import Classifier

log = logging.getLogger(__name__)

N_MISTAKES = 10
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": True, "legend.framealpha": 0.9,
         "legend.edgecolor": "none", "legend.fontsize": 8}
C_RAW, C_CAL, C_BASE = "#9aa5b1", "#1f6fb2", "#c0504d"


# ---- numbers ---------------------------------------------------------------------------------


def token_counts(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Tokens per text including special tokens, before any truncation. (n,)"""
    prefix, suffix = special_tokens(tokenizer)
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return np.array([len(s) for s in ids], dtype=np.int64) + len(prefix) + len(suffix)


def length_buckets(n_tokens: np.ndarray, max_length: int) -> tuple[np.ndarray, list[str]]:
    """Bucket index per text, on edges at max_length/4, /2, x1, x2, x4; and the bucket names."""
    edges = [max_length // 4, max_length // 2, max_length, 2 * max_length, 4 * max_length]
    names = [f"≤{edges[0]}"] + [f"{a + 1}–{b}" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]}"]
    return np.searchsorted(edges, n_tokens, side="left"), names


def confident_mistakes(y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray, *, k: int = N_MISTAKES) -> np.ndarray:
    """Row indices of the k wrong predictions made with the highest probability, most confident first."""
    wrong = np.flatnonzero(y_pred != y_true)
    conf = probs[wrong, y_pred[wrong]]
    return wrong[np.argsort(-conf, kind="stable")[:k]]


def truncation_errors(y_true: np.ndarray, y_pred: np.ndarray, truncated: np.ndarray) -> list[dict[str, Any]]:
    """Rows, errors, error rate and share of all errors for untruncated and truncated texts."""
    wrong = y_pred != y_true
    out = []
    for name, mask in (("untruncated", ~truncated), ("truncated", truncated)):
        n, e = int(mask.sum()), int(wrong[mask].sum())
        out.append({"group": name, "rows": n, "errors": e, "error_rate": e / n if n else None,
                    "share_of_errors": e / max(int(wrong.sum()), 1)})
    return out


def excerpt(text: str, *, head: int = 200, tail: int = 120) -> str:
    """A readable excerpt: HTML line breaks flattened; long texts keep their start and their end."""
    t = re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", text)).strip()
    if len(t) <= head + tail + 20:
        return t
    start, end = t[:head], t[-tail:]
    start = start[: start.rfind(" ")] if " " in start else start  # cut between words
    end = end[end.find(" ") + 1 :] if " " in end else end
    return f"{start} … {end}"


# ---- figures ---------------------------------------------------------------------------------


def _figure(w: float = 5.6, h: float = 3.9) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def fig_confusion(cm: np.ndarray, names: list[str]) -> Figure:
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
    if not history and not steps:
        return None
    fig = _figure(8.4, 3.5)
    loss_ax, metric_ax = fig.subplots(1, 2)
    epochs = (history or {}).get("epochs", [])
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
    loss_ax.set(xlabel="optimiser step", ylabel="loss", title="Training loss")
    metric_ax.set(xlabel="epoch", title="Validation metrics per epoch")
    loss_ax.legend()
    metric_ax.legend(loc="lower right")
    return fig


def fig_length(bucket: np.ndarray, names: list[str], correct: np.ndarray, max_length: int) -> Figure:
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


# ---- the page --------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    *,
    run_dir: str | Path,
    clf: Classifier,
    data_origin: str,
    texts: Sequence[str],
    labels: np.ndarray,
    logits: np.ndarray,
    base_rows: np.ndarray | None = None,
    base_probs: np.ndarray | None = None,
    seed: int = 0,
    note: str | None = None,
) -> Path:
    """Write report.html (self-contained), its PNGs and report.json to out_dir; returns the HTML path.

    `logits` are the tuned model's raw logits for `texts`; `base_probs` the untuned base model's
    probabilities for the rows `base_rows` (None: no before/after section). `note` is shown under
    the title (e.g. where the calibration data came from).
    """
    import matplotlib

    out, run_dir = Path(out_dir), Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    man, names, k = clf.manifest, clf.label_names, len(clf.label_names)
    y = np.asarray(labels)
    raw_man = dataclasses.replace(man, temperature=1.0, threshold=None)
    raw, probs = calibrated_probs(logits, raw_man), calibrated_probs(logits, man)
    pred = decide(probs, man)
    m = compute_metrics(y, probs, n_classes=k, label_names=names, y_pred=pred)
    m_raw = compute_metrics(y, raw, n_classes=k, label_names=names)
    ci = bootstrap_ci(y, pred, n_classes=k, seed=seed)
    n_tok = token_counts(clf.tokenizer, texts)
    reads = clf.max_length  # what prediction read of each text (the bundle's prediction length unless overridden)
    truncated = n_tok > reads
    bucket, bucket_names = length_buckets(n_tok, reads)
    history, steps = _run_logs(run_dir)
    cal_info = _read_json(run_dir / CALIBRATION)

    figs: dict[str, tuple[str, Figure | None]] = {}
    with matplotlib.rc_context(STYLE):
        figs["confusion_matrix"] = ("Confusion matrix of the model as deployed.", fig_confusion(np.array(m["confusion_matrix"]), names))
        figs["roc_pr"] = ("ROC and precision–recall curves" + ("; the dot is the decision rule in use." if k == 2 else ", one class against the rest."),
                          fig_roc_pr(y, probs, names, pred))
        figs["reliability"] = ("Mean confidence against accuracy per bin; on the diagonal is perfectly calibrated. "
                               "Bottom: rows per bin.", fig_reliability(y, raw, probs if man.temperature != 1.0 else None, k))
        figs["scores"] = ("How the model scores each true class.",
                          fig_scores(y, probs, names, man.threshold))
        figs["training"] = ("From the run's own history.json (per epoch) and train_log.jsonl (per step).",
                            fig_training(history, steps))
        figs["length"] = (f"{truncated.mean():.1%} of texts are longer than the {reads} tokens read and truncated "
                          f"({man.truncation}).", fig_length(bucket, bucket_names, pred == y, reads))
    images = {}
    for name, (_, fig) in figs.items():
        if fig is None:
            (out / f"{name}.png").unlink(missing_ok=True)  # a stale figure from an earlier report
        else:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            (out / f"{name}.png").write_bytes(buf.getvalue())
            images[name] = base64.b64encode(buf.getvalue()).decode("ascii")

    base = None
    if base_probs is not None and base_rows is not None and len(base_rows):
        rows = np.asarray(base_rows)
        base = {"rows": rows, "probs": base_probs, "pred": base_probs.argmax(axis=1),
                "metrics": compute_metrics(y[rows], base_probs, n_classes=k, label_names=names),
                "tuned": compute_metrics(y[rows], probs[rows], n_classes=k, label_names=names, y_pred=pred[rows])}
    mistakes = confident_mistakes(y, probs, pred)
    trunc = truncation_errors(y, pred, truncated)

    summary = {
        "run": str(run_dir), "data": data_origin, "n": len(y), "label_names": names, "note": note,
        "temperature": man.temperature, "threshold": man.threshold, "metrics": m, "raw_metrics": m_raw,
        "bootstrap_95ci": ci, "n_bootstrap": N_BOOT, "calibration": cal_info,
        "base": None if base is None else {"rows": len(base["rows"]), "metrics": base["metrics"], "tuned_metrics": base["tuned"]},
        "truncation": trunc, "figures": [f"{n}.png" for n in images],
    }
    atomic_write_json(out / "report.json", summary)
    page = _page(summary, clf, texts, y, probs, pred, n_tok, base, mistakes, figs, images)
    atomic_write_text(out / "report.html", page)
    log.info("report written to %s", out / "report.html")
    return out / "report.html"


def _run_logs(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    history = _read_json(run_dir / "history.json")
    steps = []
    log_path = run_dir / "train_log.jsonl"
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
            if {"step", "epoch", "loss"} <= row.keys():
                steps.append(row)
    return history, steps


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; left out of the report", path)
        return None


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _page(s: dict[str, Any], clf: Classifier, texts: Sequence[str], y: np.ndarray, probs: np.ndarray, pred: np.ndarray,
          n_tok: np.ndarray, base: dict[str, Any] | None, mistakes: np.ndarray,
          figs: dict[str, tuple[str, Any]], images: dict[str, str]) -> str:
    man, names, m, ci = clf.manifest, clf.label_names, s["metrics"], s["bootstrap_95ci"]
    esc = html.escape
    calibrated = man.temperature != 1.0 or man.threshold is not None
    rule = (f"P({esc(names[1])}) ≥ {man.threshold:.4f}" if man.threshold is not None else "argmax")
    parts = [f"<h1>Evaluation report — {esc(Path(s['run']).name)}</h1>",
             f'<p class="meta">Run <code>{esc(s["run"])}</code> · base model <code>{esc(man.base_model)}</code> · '
             f"data <code>{esc(s['data'])}</code> · {s['n']:,} texts · labels {', '.join(map(esc, names))} · "
             f"reads {clf.max_length} tokens (trained on {man.max_length}, {esc(man.truncation)}) · temperature {man.temperature:.4f} · decision rule "
             f"{rule} · generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by sentilora {esc(man.sentilora_version)}</p>"]
    if s.get("note"):
        parts.append(f'<p class="callout">{esc(s["note"])}</p>')

    # headline
    keys = [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
            ("roc_auc", "ROC-AUC"), ("loss", "log-loss"), ("ece", "ECE")]
    multi = len(names) > 2
    if multi:
        keys = [(a, b + (" (macro)" if a in ("precision", "recall", "f1") else "")) for a, b in keys]
    head = ["metric", "as deployed" + (" (calibrated)" if calibrated else ""), "95% bootstrap CI"]
    head += ["raw model (T = 1, argmax)"] if calibrated else []
    rows = []
    for key, label in keys:
        interval = f"[{_f(ci[key][0])}, {_f(ci[key][1])}]" if key in ci else ""
        rows.append([label, f"<b>{_f(m.get(key))}</b>", interval] + ([_f(s["raw_metrics"].get(key))] if calibrated else []))
    parts += ["<h2>Headline metrics</h2>", _table(head, rows, cls="num"),
              f'<p class="note">Binary precision, recall and F1 are of class “{esc(names[-1])}”. '
              f"Intervals: percentile bootstrap over rows, {s['n_bootstrap']:,} resamples. ECE: top-class confidence in 15 "
              "equal-width bins, |accuracy − confidence| weighted by rows (0 = perfectly calibrated).</p>"
              if len(names) == 2 else
              f'<p class="note">Intervals: percentile bootstrap over rows, {s["n_bootstrap"]:,} resamples.</p>']
    if multi:
        from sklearn.metrics import classification_report

        rep = classification_report(y, pred, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0)
        prow = [[esc(n), _f(rep[n]["precision"]), _f(rep[n]["recall"]), _f(rep[n]["f1-score"]), f"{int(rep[n]['support']):,}"]
                for n in (*names, "macro avg", "weighted avg")]
        parts += ["<h3>Per class</h3>", _table(["class", "precision", "recall", "F1", "support"], prow, cls="num")]

    # calibration
    parts.append("<h2>Calibration</h2>")
    info = s["calibration"]
    if info and calibrated:
        thr = ""
        if info.get("threshold") is not None:
            goal = "F1" if info["threshold_metric"] == "f1" else f"precision at recall ≥ {info['min_recall']}"
            r = s["raw_metrics"]
            thr = (f" The decision threshold {info['threshold']:.4f} on P({esc(names[1])}) was chosen there for {goal}; "
                   f"against argmax, on this data it moves accuracy {r['accuracy']:.4f} → {m['accuracy']:.4f}, "
                   f"precision {r['precision']:.4f} → {m['precision']:.4f}, recall {r['recall']:.4f} → {m['recall']:.4f} "
                   f"and F1 {r['f1']:.4f} → {m['f1']:.4f}.")
        parts.append(f"<p>Temperature scaling: logits are divided by <b>T = {man.temperature:.4f}</b>, fitted to minimise "
                     f"log-loss on <code>{esc(info['data'])}</code> ({info['n']:,} labelled texts).{thr} "
                     "Temperature changes confidence, not the ranking: ROC-AUC is the same before and after.</p>")
        crow = [["validation (fit)", _f(info["before"]["ece"]), _f(info["after"]["ece"]), _f(info["before"]["loss"]),
                 _f(info["after"]["loss"]), _f(info["before"]["accuracy"]), _f(info["after"]["accuracy"])],
                ["this data", _f(s["raw_metrics"]["ece"]), _f(m["ece"]), _f(s["raw_metrics"]["loss"]), _f(m["loss"]),
                 _f(s["raw_metrics"]["accuracy"]), _f(m["accuracy"])]]
        parts.append(_table(["data", "ECE before", "ECE after", "log-loss before", "log-loss after", "accuracy before",
                             "accuracy after"], crow, cls="num"))
    else:
        parts.append(f"<p>This bundle is not calibrated (T = 1, argmax): ECE {_f(m['ece'])}. Fit a temperature (and a "
                     "binary threshold) on validation data with <code>sentilora calibrate RUN_DIR --data VAL_FILE</code>.</p>")
    parts.append('<div class="grid">' + "".join(_fig(n, figs, images) for n in ("reliability", "scores")) + "</div>")

    # before / after
    if base is not None:
        rows_n, n = len(base["rows"]), s["n"]
        where = "all" if rows_n == n else f"a seeded random subsample of {rows_n:,} of the {n:,}"
        parts += ["<h2>Before and after fine-tuning</h2>",
                  f"<p>The untuned base model (<code>{esc(man.base_model)}</code> with a freshly initialised, seeded head) "
                  f"against the tuned model, both scored on {where} rows (<code>--base-sample</code>).</p>"]
        brow = [[label, _f(base["metrics"].get(key)), f"<b>{_f(base['tuned'].get(key))}</b>"] for key, label in keys]
        parts.append(_table(["metric", "base (untuned)", "tuned"], brow, cls="num"))
        says = f" (P({names[1]}))" if len(names) == 2 else " (probability)"
        parts.append(_table(["text (excerpt)", "true", "base says" + says, "tuned says" + says],
                            _examples(base, texts, y, probs, pred, names), cls="texts"))

    # plots
    parts.append("<h2>Plots</h2>")
    parts.append('<div class="grid">' + "".join(_fig(n, figs, images) for n in ("confusion_matrix", "length")) + "</div>")
    parts += [_fig(n, figs, images) for n in ("roc_pr", "training")]

    # errors
    trunc = s["truncation"]
    parts += ["<h2>Error analysis</h2>", f"<h3>The {len(mistakes)} most confident mistakes</h3>"]
    mrow = [[esc(excerpt(texts[i])), esc(names[y[i]]), esc(names[pred[i]]), _f(probs[i, pred[i]], 3),
             f"{n_tok[i]:,}" + (" ✂" if n_tok[i] > clf.max_length else "")] for i in mistakes]
    parts.append(_table(["text (excerpt)", "true", "predicted", "P(predicted)", "tokens"], mrow, cls="texts"))
    parts.append(f'<p class="note">✂ = longer than the {clf.max_length} tokens read: the model saw only part of it '
                 f"({esc(man.truncation)} truncation).</p>")
    parts.append("<h3>Errors in truncated and untruncated texts</h3>")
    trow = [[t["group"], f"{t['rows']:,}", f"{t['errors']:,}", _f(t["error_rate"]), f"{t['share_of_errors']:.1%}"] for t in trunc]
    parts.append(_table(["texts", "rows", "errors", "error rate", "share of all errors"], trow, cls="num"))
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>sentilora report — {esc(Path(s["run"]).name)}</title>'
            f"<style>{_CSS}</style></head><body><main>\n{body}\n</main></body></html>\n")


def _examples(base: dict[str, Any], texts: Sequence[str], y: np.ndarray, probs: np.ndarray, pred: np.ndarray,
              names: list[str], n: int = 6) -> list[list[str]]:
    """A handful of rows: mostly where tuning fixed the base model, some both get right, one still wrong."""
    rows = base["rows"]
    b_ok, t_ok = base["pred"] == y[rows], pred[rows] == y[rows]
    rng = np.random.default_rng(0)
    picks: list[int] = []
    for mask, want in ((~b_ok & t_ok, 3), (b_ok & t_ok, 2), (~t_ok, 1)):
        cand = np.flatnonzero(mask)
        picks += rng.permutation(cand)[:want].tolist()
    if len(picks) < n:
        picks += [j for j in rng.permutation(len(rows)).tolist() if j not in picks][: n - len(picks)]
    out = []
    def says(ok: bool, label: int, p: np.ndarray) -> str:
        shown = p[1] if len(names) == 2 else p[label]  # binary: P(class 1), whichever side of the threshold
        return f"{'✓' if ok else '✗'} {html.escape(names[label])} ({shown:.2f})"

    for j in picks[:n]:
        i = rows[j]
        out.append([html.escape(excerpt(texts[i], head=160, tail=100)), html.escape(names[y[i]]),
                    says(b_ok[j], base["pred"][j], base["probs"][j]), says(t_ok[j], pred[i], probs[i])])
    return out


def _fig(name: str, figs: dict[str, tuple[str, Any]], images: dict[str, str]) -> str:
    if name not in images:
        return f'<p class="note">No {name} figure: the files it is drawn from are not in the run folder.</p>'
    caption = html.escape(figs[name][0])
    return (f'<figure><a href="{name}.png"><img alt="{name}" src="data:image/png;base64,{images[name]}"></a>'
            f"<figcaption>{caption}</figcaption></figure>")


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;background:#fff;margin:0}
main{max-width:1080px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:0 0 6px}h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #dde3e8;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 8px}.meta{color:#56616b;font-size:13px}.note{color:#56616b;font-size:13px}
code{font-size:13px;background:#f2f4f6;padding:1px 4px;border-radius:3px;word-break:break-all}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px}
th,td{padding:5px 12px;border-bottom:1px solid #e6eaee;text-align:left;vertical-align:top}
th{background:#f5f7f9;font-weight:600}table.num td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
table.texts{width:100%}table.texts td:first-child{width:62%;font-size:13px;color:#2d3640}
table.texts td:not(:first-child){white-space:nowrap}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #eef1f4}
figcaption{color:#56616b;font-size:13px}.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px;align-items:start}
.callout{background:#f3f7fb;border-left:3px solid #1f6fb2;padding:8px 12px;font-size:14px}
"""
