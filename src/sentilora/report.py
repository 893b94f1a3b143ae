"""The evaluation report: one self-contained HTML page (PNGs inline) with the same PNGs beside it.

Headline metrics with bootstrap confidence intervals, calibration (ECE before/after temperature
scaling, reliability diagram), the untuned base model against the tuned one, the TF-IDF baseline
beside it ("is the transformer worth it here?"), plots, and error analysis. Python computes every number and formats every cell here; the page itself is laid
out by the Jinja2 template `resources/report.html.j2` (autoescaped), the figures drawn by
`sentilora.figures`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template

from sentilora.baseline import fit_time, verdict
from sentilora.calibration import CALIBRATION, calibrated_probs, decide
from sentilora.figures import (
    fig_confusion,
    fig_length,
    fig_reliability,
    fig_roc_pr,
    fig_scores,
    fig_training,
    styled,
    to_png,
)
from sentilora.explain import shades
from sentilora.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from sentilora.metrics import N_BOOT, bootstrap_ci, compute_metrics
from sentilora.tokens import special_tokens

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sentilora.predict import Classifier

log = logging.getLogger(__name__)

N_MISTAKES = 10
RESOURCES = Path(__file__).parent / "resources"


# ---- numbers ---------------------------------------------------------------------------------


def token_counts(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Tokens per text including special tokens, before any truncation. (n,)"""
    prefix, suffix = special_tokens(tokenizer)
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return np.array([len(s) for s in ids], dtype=np.int64) + len(prefix) + len(suffix)


def length_buckets(n_tokens: np.ndarray, max_length: int) -> tuple[np.ndarray, list[str]]:
    """Bucket index per text, on edges at max_length/4, /2, x1, x2, x4; and the bucket names."""
    edges = [max_length // 4, max_length // 2, max_length, 2 * max_length, 4 * max_length]
    names = [f"≤{edges[0]}"] + [f"{a + 1}–{b}" for a, b in pairwise(edges)] + [f">{edges[-1]}"]
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


_BREAK = re.compile(r"<br\s*/?>")


def highlighted_excerpt(text: str, words: Sequence[Any], *, head: int = 200, tail: int = 120) -> list[dict[str, Any]]:
    """`excerpt`'s view of a text, as pieces for the template: {"text", "style"} with each word's
    background from its explanation score (green raises the explained label, red lowers it,
    struck through: never read), HTML line breaks flattened, long texts cut between words."""
    breaks = [(m.start(), m.end()) for m in _BREAK.finditer(text)]
    pieces: list[dict[str, Any]] = []
    at = 0
    for w, strength in zip(words, shades(words)):
        if any(a <= w.start and w.end <= b for a, b in breaks):  # a piece of "<br />": shown as a space
            continue
        if w.start > at:
            pieces.append({"text": " ", "style": None})
        if strength is None:
            style = "text-decoration:line-through;color:#8a909c"
        else:
            style = f"background:rgba({'46,160,67' if strength > 0 else '215,58,73'},{0.75 * abs(strength):.2f})"
        pieces.append({"text": w.word, "style": style})
        at = w.end
    if sum(len(p["text"]) for p in pieces) <= head + tail + 20:
        return pieces
    first, n = [], 0
    while n < head:
        first.append(pieces[len(first)])
        n += len(first[-1]["text"])
    last, n = [], 0
    while n < tail:
        last.insert(0, pieces[len(pieces) - 1 - len(last)])
        n += len(last[0]["text"])
    return first + [{"text": " … ", "style": None}] + last


# ---- the page ----------------------------------------------------------------------------------


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
    baseline: dict[str, Any] | None = None,
    long_texts: str = "truncate",
) -> Path:
    """Write report.html (self-contained), its PNGs and report.json to out_dir; returns the HTML path.

    `logits` are the tuned model's raw logits for `texts`; `base_probs` the untuned base model's
    probabilities for the rows `base_rows` (None: no before/after section). `note` is shown under
    the title (e.g. where the calibration data came from). `baseline` is `evaluate_run`'s
    result["baseline"] for the same rows (None: no baseline section). `long_texts` says how the
    logits read long texts: "chunk" read every token (in windows), so nothing counts as truncated.
    """
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
    chunked = long_texts == "chunk"
    truncated = n_tok > reads if not chunked else np.zeros(len(n_tok), dtype=bool)
    bucket, bucket_names = length_buckets(n_tok, reads)
    history, steps = _run_logs(run_dir)
    cal_info = _read_json(run_dir / CALIBRATION)

    figs: dict[str, tuple[str, Figure | None]] = {}
    with styled():
        figs["confusion_matrix"] = ("Confusion matrix of the model as deployed.", fig_confusion(np.array(m["confusion_matrix"]), names))
        figs["roc_pr"] = ("ROC and precision–recall curves" + ("; the dot is the decision rule in use." if k == 2 else ", one class against the rest."),
                          fig_roc_pr(y, probs, names, pred))
        figs["reliability"] = (("Mean confidence against accuracy per bin; on the diagonal is perfectly calibrated. "
                                "Bottom: rows per bin."), fig_reliability(y, raw, probs if man.temperature != 1.0 else None, k))
        figs["scores"] = ("How the model scores each true class.",
                          fig_scores(y, probs, names, man.threshold))
        validated = any("loss" in h for h in (history or {}).get("epochs", []))
        figs["training"] = ("From the run's own history.json (per epoch) and train_log.jsonl (per step)."
                            + ("" if validated or not history else
                               " No validation texts were held out, so there are no per-epoch validation scores."),
                            fig_training(history, steps))
        figs["length"] = ((f"{(n_tok > reads).mean():.1%} of texts are longer than {reads} tokens: read whole, in "
                           f"overlapping windows of {reads} tokens (--long-texts chunk)." if chunked else
                           f"{truncated.mean():.1%} of texts are longer than the {reads} tokens read and truncated "
                           f"({man.truncation})."), fig_length(bucket, bucket_names, pred == y, reads))
    images = {}
    for name, (_, fig) in figs.items():
        if fig is None:
            (out / f"{name}.png").unlink(missing_ok=True)  # a stale figure from an earlier report
        else:
            png = to_png(fig)
            atomic_write_bytes(out / f"{name}.png", png)
            images[name] = base64.b64encode(png).decode("ascii")

    base = None
    if base_probs is not None and base_rows is not None and len(base_rows):
        rows = np.asarray(base_rows)
        base = {"rows": rows, "probs": base_probs, "pred": base_probs.argmax(axis=1),
                "metrics": compute_metrics(y[rows], base_probs, n_classes=k, label_names=names),
                "tuned": compute_metrics(y[rows], probs[rows], n_classes=k, label_names=names, y_pred=pred[rows])}
    mistakes = confident_mistakes(y, probs, pred)
    trunc = truncation_errors(y, pred, truncated)
    explained = _explain_mistakes(clf, texts, mistakes, long_texts)

    summary = {
        "run": str(run_dir), "data": data_origin, "n": len(y), "label_names": names, "note": note,
        "temperature": man.temperature, "threshold": man.threshold, "metrics": m, "raw_metrics": m_raw,
        "bootstrap_95ci": ci, "n_bootstrap": N_BOOT, "calibration": cal_info,
        "base": None if base is None else {"rows": len(base["rows"]), "metrics": base["metrics"], "tuned_metrics": base["tuned"]},
        "truncation": trunc, "figures": [f"{n}.png" for n in images], "baseline": baseline,
    }
    atomic_write_json(out / "report.json", summary)
    figures = {n: {"name": n, "caption": caption, "png": images.get(n)} for n, (caption, _) in figs.items()}
    context = _context(summary, clf, texts, y, probs, pred, n_tok, truncated, base, mistakes, figures, explained)
    context["chunked"] = chunked
    context["baseline"] = None if baseline is None else _baseline(baseline, m, history, binary=k == 2)
    atomic_write_text(out / "report.html", _template().render(context))
    log.info("report written to %s", out / "report.html")
    return out / "report.html"


def _explain_mistakes(clf: Classifier, texts: Sequence[str], rows: np.ndarray,
                      long_texts: str = "truncate") -> list[list[dict[str, Any]]] | None:
    """The mistakes' words shaded by what drove the wrong label (integrated gradients); None for an
    ONNX model, which has no gradients (the table then shows plain excerpts)."""
    if clf.model is None or not len(rows):
        return None
    t0 = time.perf_counter()
    found = clf.explain([texts[i] for i in rows], long_texts=long_texts)  # type: ignore[arg-type]
    log.info("explained the %d most confident mistakes in %.1f s", len(rows), time.perf_counter() - t0)
    return [highlighted_excerpt(e.text, e.words) for e in found]


@lru_cache(maxsize=1)
def _template() -> Template:
    # autoescape on for the whole page: values go in as plain text, so no html.escape calls here;
    # StrictUndefined: a context key missing from _context is an error, not a silently empty cell
    env = Environment(loader=FileSystemLoader(RESOURCES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str, bold: int | None = None) -> dict[str, Any]:
    """A table for the template's `table` macro: header, rows of formatted cells, the column shown bold."""
    return {"head": list(head), "rows": [list(r) for r in rows], "cls": cls, "bold": bold}


def _context(s: dict[str, Any], clf: Classifier, texts: Sequence[str], y: np.ndarray, probs: np.ndarray,
             pred: np.ndarray, n_tok: np.ndarray, truncated: np.ndarray, base: dict[str, Any] | None, mistakes: np.ndarray,
             figures: dict[str, dict[str, Any]], explained: list[list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Everything report.html.j2 shows, numbers formatted: the template only lays it out."""
    man, names, m, ci, raw = clf.manifest, clf.label_names, s["metrics"], s["bootstrap_95ci"], s["raw_metrics"]
    binary = len(names) == 2
    calibrated = man.temperature != 1.0 or man.threshold is not None
    keys = [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
            ("roc_auc", "ROC-AUC"), ("loss", "log-loss"), ("ece", "ECE")]
    if not binary:
        keys = [(a, b + (" (macro)" if a in ("precision", "recall", "f1") else "")) for a, b in keys]

    head = ["metric", "as deployed" + (" (calibrated)" if calibrated else ""), "95% bootstrap CI"]
    head += ["raw model (T = 1, argmax)"] if calibrated else []
    rows = [[label, _f(m.get(key)), f"[{_f(ci[key][0])}, {_f(ci[key][1])}]" if key in ci else ""]
            + ([_f(raw.get(key))] if calibrated else []) for key, label in keys]
    per_class = None
    if not binary:
        from sklearn.metrics import classification_report

        rep = classification_report(y, pred, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0)
        prow = [[n, _f(rep[n]["precision"]), _f(rep[n]["recall"]), _f(rep[n]["f1-score"]), f"{int(rep[n]['support']):,}"]
                for n in (*names, "macro avg", "weighted avg")]
        per_class = _table(["class", "precision", "recall", "F1", "support"], prow, cls="num")

    trow = [[t["group"], f"{t['rows']:,}", f"{t['errors']:,}", _f(t["error_rate"]), f"{t['share_of_errors']:.1%}"]
            for t in s["truncation"]]
    mrow = [[excerpt(texts[i]), names[y[i]], names[pred[i]], _f(probs[i, pred[i]], 3),
             f"{n_tok[i]:,}" + (" ✂" if truncated[i] else "")] for i in mistakes]
    return {
        "run_name": Path(s["run"]).name, "run": s["run"], "base_model": man.base_model, "data": s["data"],
        "n": f"{s['n']:,}", "labels": names, "positive": names[-1], "binary": binary,
        "reads": clf.max_length, "trained_on": man.max_length, "truncation": man.truncation,
        "temperature": f"{man.temperature:.4f}", "threshold": None if man.threshold is None else f"{man.threshold:.4f}",
        "generated": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", "version": man.sentilora_version, "note": s.get("note"),
        "headline": _table(head, rows, cls="num", bold=1), "n_bootstrap": f"{s['n_bootstrap']:,}", "per_class": per_class,
        "calibration": _calibration(s, clf) if s["calibration"] and calibrated else None, "ece": _f(m["ece"]),
        "figures": figures,
        "base": None if base is None else _before_after(base, s["n"], keys, texts, y, probs, pred, names),
        "n_mistakes": len(mistakes),
        "mistakes": _table(["text (excerpt)", "true", "predicted", "P(predicted)", "tokens"], mrow, cls="texts"),
        "mistake_words": explained,  # per mistake, the excerpt as shaded pieces (or None: plain excerpts)
        "truncation_errors": _table(["texts", "rows", "errors", "error rate", "share of all errors"], trow, cls="num"),
    }


def _calibration(s: dict[str, Any], clf: Classifier) -> dict[str, Any]:
    """Where the temperature (and threshold) were fitted, and before/after on that data and on this."""
    info, m, raw = s["calibration"], s["metrics"], s["raw_metrics"]
    threshold = None
    if info.get("threshold") is not None:
        goal = "F1" if info["threshold_metric"] == "f1" else f"precision at recall ≥ {info['min_recall']}"
        threshold = {"value": f"{info['threshold']:.4f}", "goal": goal,
                     **{key: (_f(raw[key]), _f(m[key])) for key in ("accuracy", "precision", "recall", "f1")}}
    b, a = info["before"], info["after"]
    crow = [["validation (fit)", _f(b["ece"]), _f(a["ece"]), _f(b["loss"]), _f(a["loss"]), _f(b["accuracy"]), _f(a["accuracy"])],
            ["this data", _f(raw["ece"]), _f(m["ece"]), _f(raw["loss"]), _f(m["loss"]), _f(raw["accuracy"]), _f(m["accuracy"])]]
    head = ["data", "ECE before", "ECE after", "log-loss before", "log-loss after", "accuracy before", "accuracy after"]
    return {"data": info["data"], "n": f"{info['n']:,}", "threshold": threshold, "table": _table(head, crow, cls="num")}


def _baseline(baseline: dict[str, Any], m: dict[str, Any], history: dict[str, Any] | None, *, binary: bool) -> dict[str, Any]:
    """The TF-IDF baseline beside the model as deployed: accuracy, F1, training time, the difference, the verdict."""
    b = baseline["metrics"]
    f1 = "F1" if binary else "F1 (macro)"
    rows = [[label, _f(m[key]), _f(b[key]), f"{m[key] - b[key]:+.4f}"] for key, label in (("accuracy", "accuracy"), ("f1", f1))]
    trained = history.get("train_seconds") if history else None
    rows.append(["training time", "n/a" if trained is None else fit_time(trained), fit_time(baseline["fit_seconds"]), ""])
    return {"name": baseline["name"], "train_n": f"{baseline['train_n']:,}", "verdict": verdict(m["accuracy"], baseline),
            "table": _table(["", "sentilora", "TF-IDF + LR", "difference (sentilora − baseline)"], rows, cls="num")}


def _before_after(base: dict[str, Any], n: int, keys: list[tuple[str, str]], texts: Sequence[str], y: np.ndarray,
                  probs: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The untuned base model against the tuned one: metrics on the same rows, and a few example texts."""
    rows_n = len(base["rows"])
    where = "all" if rows_n == n else f"a seeded random subsample of {rows_n:,} of the {n:,}"
    brow = [[label, _f(base["metrics"].get(key)), _f(base["tuned"].get(key))] for key, label in keys]
    says = f" (P({names[1]}))" if len(names) == 2 else " (probability)"
    return {"where": where, "metrics": _table(["metric", "base (untuned)", "tuned"], brow, cls="num", bold=2),
            "examples": _table(["text (excerpt)", "true", "base says" + says, "tuned says" + says],
                               _examples(base, texts, y, probs, pred, names), cls="texts")}


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

    def says(ok: bool, label: int, p: np.ndarray) -> str:
        shown = p[1] if len(names) == 2 else p[label]  # binary: P(class 1), whichever side of the threshold
        return f"{'✓' if ok else '✗'} {names[label]} ({shown:.2f})"

    out = []
    for j in picks[:n]:
        i = rows[j]
        out.append([excerpt(texts[i], head=160, tail=100), names[y[i]], says(b_ok[j], base["pred"][j], base["probs"][j]),
                    says(t_ok[j], pred[i], probs[i])])
    return out

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

