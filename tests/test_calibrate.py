from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sentilora import Classifier
from sentilora.calibration import (
    calibrated_probs,
    choose_threshold,
    decide,
    fit_temperature,
    nll,
)
from sentilora.cli import app
from sentilora.errors import BundleError, ConfigError
from sentilora.bundle import Manifest, merge_bundle
from sentilora.evaluate import evaluate_run
from sentilora.metrics import compute_metrics, expected_calibration_error

TEXTS = ["The movie was great and wonderful.", "Awful, boring, the worst plot.", "It was okay, fine.", "film",
         "Dull and bad but the actor was good.", "Loved it, superb story.", "The plot was very plain.", "worst film"]


def _synthetic(scale: float, n: int = 3000, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true logits); the 'model' reports the true logits times `scale`."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return (true * scale).astype(np.float32), y


@pytest.mark.parametrize("scale", [4.0, 0.3], ids=["overconfident", "underconfident"])
def test_temperature_scaling_undoes_miscalibration(scale):
    logits, y = _synthetic(scale)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(scale, rel=0.15)  # the miscalibration was exactly a temperature
    assert nll(logits, y, t) < nll(logits, y) - 0.02
    man = _manifest(temperature=t)
    before, after = calibrated_probs(logits, _manifest()), calibrated_probs(logits, man)
    assert expected_calibration_error(y, after) < expected_calibration_error(y, before)
    np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))  # confidence changes, never the class


def test_ece_by_hand():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.3, 0.7], [0.4, 0.6]])
    # bins (14/15, 1]: confidences .95,.95, both right -> gap .05; (.6667, .7333]: .7 right -> .3; (.5333, .6]: .6 wrong -> .6
    assert expected_calibration_error(y, probs) == pytest.approx((2 * 0.05 + 0.3 + 0.6) / 4)
    assert compute_metrics(y, probs, n_classes=2)["ece"] == pytest.approx(expected_calibration_error(y, probs))


def test_threshold_choice_is_optimal_on_validation():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p1 = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, 400), 0, 1)
    cuts = np.unique(p1)

    def f1(t):
        pred = p1 >= t
        tp = (pred & (y == 1)).sum()
        return 2 * tp / (pred.sum() + (y == 1).sum())

    t = choose_threshold(p1, y, metric="f1")
    assert f1(t) == pytest.approx(max(f1(c) for c in cuts))
    assert not np.isin(t, p1)  # halfway between two scores, not on one

    t = choose_threshold(p1, y, metric="precision_at_recall", min_recall=0.9)
    pred = p1 >= t
    recall = (pred & (y == 1)).sum() / (y == 1).sum()
    assert recall >= 0.9
    best = max(((p1 >= c) & (y == 1)).sum() / (p1 >= c).sum() for c in cuts if ((p1 >= c) & (y == 1)).sum() >= 0.9 * (y == 1).sum())
    assert (pred & (y == 1)).sum() / pred.sum() == pytest.approx(best)
    with pytest.raises(ConfigError, match="--min-recall"):
        choose_threshold(p1, y, metric="precision_at_recall")


def test_decide_applies_the_threshold_for_binary_only():
    probs = np.array([[0.3, 0.7], [0.6, 0.4], [0.15, 0.85]])
    assert decide(probs, _manifest()).tolist() == [1, 0, 1]
    assert decide(probs, _manifest(threshold=0.8)).tolist() == [0, 0, 1]
    assert decide(probs, _manifest(threshold=0.35)).tolist() == [1, 1, 1]
    with pytest.raises(BundleError, match="binary"):
        decide(np.full((2, 3), 1 / 3), _manifest(threshold=0.5))


def test_bundles_without_calibration_still_load(tmp_path):
    raw = {k: v for k, v in _manifest().__dict__.items() if k not in ("temperature", "threshold")}
    (tmp_path / "sentilora.json").write_text(json.dumps(raw))
    man = Manifest.read(tmp_path)
    assert man.temperature == 1.0 and man.threshold is None


@pytest.fixture
def binary_run(trained_run, tmp_path):
    """(a copy of the shared tiny binary run, a labelled file to calibrate on)."""
    from conftest import make_rows

    test_csv = tmp_path / "test.csv"
    make_rows(24, ["negative", "positive"], seed=2).to_csv(test_csv, index=False)
    return trained_run("bert"), test_csv


def test_calibrate_cli_stores_temperature_and_threshold(binary_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(binary_run[0], run)
    invoke = CliRunner().invoke
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only 24 rows": expected here
        r = invoke(app, ["calibrate", str(run), "--data", str(binary_run[1]), "--threshold", "f1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "temperature" in r.output and "ECE" in r.output
    man = Manifest.read(run)
    info = json.loads((run / "calibration.json").read_text())
    assert man.temperature == pytest.approx(info["temperature"]) and man.threshold == pytest.approx(info["threshold"])
    assert info["after"]["loss"] <= info["before"]["loss"] + 1e-9 and info["n"] == 24
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = invoke(app, ["calibrate", str(run), "--data", str(binary_run[1])], catch_exceptions=False)
    assert r.exit_code == 0 and Manifest.read(run).threshold is None  # a new calibration replaces the old one
    r = invoke(app, ["calibrate", str(run), "--threshold", "recall"])
    assert r.exit_code == 2 and "--threshold must be" in r.output


def _stored(binary_run, tmp_path):
    """A copy of the run with a temperature and a threshold that flips argmax decisions."""
    run = tmp_path / "run"
    shutil.copytree(binary_run[0], run)
    clf = Classifier.load(run)
    logits = clf.logits(TEXTS)
    man = dataclasses.replace(clf.manifest, temperature=0.25)
    p1 = calibrated_probs(logits, man)[:, 1]
    # below every score by far more than bf16 noise: every text is positive, where argmax says negative for some
    man = dataclasses.replace(man, threshold=float(p1.min() - 0.02))
    man.save(run)
    expect_probs = calibrated_probs(logits, man)
    expect = [clf.label_names[i] for i in decide(expect_probs, man)]
    assert expect != [clf.label_names[i] for i in logits.argmax(axis=1)], "threshold must matter for this test"
    return run, expect_probs, expect


def test_stored_calibration_applies_in_every_path(binary_run, tmp_path):
    run, probs, labels = _stored(binary_run, tmp_path)
    clf = Classifier.load(run)
    np.testing.assert_allclose(clf.predict_proba(TEXTS), probs, rtol=1e-5)
    assert clf.predict(TEXTS) == labels and clf.predict(TEXTS[1]) == labels[1]

    # exports: the merged model and the ONNX export carry the manifest, so they predict the same way
    exports = [merge_bundle(run, tmp_path / "merged")]
    if importlib.util.find_spec("onnxruntime"):
        from sentilora.export import export_onnx

        export_onnx(run, tmp_path / "onnx", texts=TEXTS)
        exports.append(tmp_path / "onnx")
    for folder in exports:
        m = Classifier.load(folder)
        assert m.manifest.temperature == 0.25 and m.manifest.threshold == clf.manifest.threshold
        np.testing.assert_allclose(m.predict_proba(TEXTS), probs, atol=1e-3)
        assert m.predict(TEXTS) == labels

    # evaluation scores with the same rule that made the labels
    pd.DataFrame({"text": TEXTS, "label": labels}).to_csv(tmp_path / "eval.csv", index=False)
    result = evaluate_run(run, data=str(tmp_path / "eval.csv"), output=tmp_path / "m.json")
    assert result["metrics"]["accuracy"] == 1.0
    assert result["metrics"]["loss"] == pytest.approx(compute_metrics(
        np.array([clf.label_names.index(x) for x in labels]), probs, n_classes=2)["loss"], abs=1e-5)

    # the CLI, for texts and for files
    invoke = CliRunner().invoke
    r = invoke(app, ["predict", str(run), *TEXTS, "--json"], catch_exceptions=False)
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # JSON Lines
    np.testing.assert_allclose([[row["probs"][n] for n in clf.label_names] for row in rows], probs, atol=1e-3)
    assert [row["label"] for row in rows] == labels
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    r = invoke(app, ["predict", str(run), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")],
               catch_exceptions=False)
    assert r.exit_code == 0, r.output
    scored = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(scored[["prob_negative", "prob_positive"]].to_numpy(), probs, atol=1e-3)
    assert scored["pred_label"].tolist() == labels


def _manifest(**kw: object) -> Manifest:
    base = dict(kind="adapter", base_model="x", base_revision=None, base_fingerprint="0", label_names=["negative", "positive"],
                head_modules=["classifier"], target_modules=["query"], max_length=32, truncation="head_tail")
    return Manifest(**{**base, **kw})


def test_calibrate_logs_its_warning_and_calls_the_file_validation(binary_run, tmp_path):
    """A small calibration set is one clean log line, not Python's warning with its source path and code;
    the file calibrate fits on is its validation rows, not test rows."""
    run = tmp_path / "run"
    shutil.copytree(binary_run[0], run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = CliRunner().invoke(app, ["calibrate", str(run), "--data", str(binary_run[1])], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # the console wraps long lines
    assert "WARNING fitting a temperature on only 24 rows; it will be noisy." in said
    assert "loaded 24 validation rows from" in said and "test rows" not in said
    assert "UserWarning" not in said and "calibrate.py" not in said
    assert not [w for w in caught if "temperature" in str(w.message)]
