"""`sentilora calibrate`: fit a temperature (and a binary threshold) on held-out data, store it in the bundle.

The maths lives in `sentilora.calibration`; this job loads the run and its validation data, fits,
compares before and after, and writes the manifest and calibration.json.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sentilora.bundle import Manifest
from sentilora.calibration import CALIBRATION, calibrated_probs, choose_threshold, decide, fit_temperature
from sentilora.errors import ConfigError
from sentilora.evaluate import load_eval_split
from sentilora.files import atomic_write_json
from sentilora.metrics import compute_metrics

log = logging.getLogger(__name__)

ThresholdMetric = Literal["none", "f1", "precision_at_recall"]


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
    run_dir = Path(run_dir)
    if split is None:  # a file is used whole ("test" of a one-file source); anything else by its validation split
        split = "test" if data is not None and Path(data).is_file() else "validation"
    if min_recall is not None and threshold != "precision_at_recall":
        raise ConfigError("--min-recall applies only with --threshold precision-at-recall; add that or drop --min-recall.")
    clf, part, run_cfg = load_eval_split(run_dir, data=data, split=split, text_column=text_column, label_column=label_column,
                                         role="validation")  # fitted on, never tested on
    bs = batch_size or run_cfg.eval.batch_size
    k = len(clf.label_names)
    if threshold != "none" and k != 2:
        raise ConfigError(f"--threshold is for binary tasks; this model has {k} classes. Drop --threshold.")
    y = np.asarray(part.labels)
    log.info("calibrating on %d texts from %s", len(y), part.origin)
    logits = clf.logits(part.texts, batch_size=bs, progress=progress)  # raw: the fit starts from T = 1
    with warnings.catch_warnings(record=True) as caught:  # a job logs: one clean line, not Python's source-and-code form
        warnings.simplefilter("always")
        t = fit_temperature(logits, y)
    for w in caught:
        log.warning("%s", w.message)
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
    atomic_write_json(run_dir / CALIBRATION, result)
    log.info("temperature %.4f, threshold %s; NLL %.4f -> %.4f, ECE %.4f -> %.4f", t, thr,
             result["before"]["loss"], result["after"]["loss"], result["before"]["ece"], result["after"]["ece"])
    result["written_to"] = str(run_dir / CALIBRATION)
    return result
