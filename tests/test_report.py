from __future__ import annotations

import base64
import io
import json
import re
import shutil
import warnings

import numpy as np
import pytest
from conftest import make_rows
from PIL import Image
from typer.testing import CliRunner

from sentilora.calibrate import calibrate_run
from sentilora.cli import app
from sentilora.evaluate import evaluate_run
from sentilora.metrics import bootstrap_ci
from sentilora.predict import Classifier
from sentilora.explain import Word
from sentilora.report import (
    confident_mistakes,
    excerpt,
    highlighted_excerpt,
    length_buckets,
    truncation_errors,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _valid_png(data: bytes) -> bool:
    if not data.startswith(PNG_MAGIC):
        return False
    Image.open(io.BytesIO(data)).verify()  # raises on a damaged file
    return Image.open(io.BytesIO(data)).size[0] > 100


@pytest.mark.parametrize(("arch", "classes"), [("bert", ("negative", "positive")),
                                               ("distilbert", ("negative", "neutral", "positive"))], ids=["binary", "3class"])
def test_report_builds_with_valid_images(trained_run, tmp_path, arch, classes):
    run = tmp_path / "run"
    shutil.copytree(trained_run(arch, classes), run)  # calibration rewrites the bundle: work on a copy
    test_csv = tmp_path / "test.csv"
    make_rows(30, list(classes), seed=2).to_csv(test_csv, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few rows to calibrate on: expected here
        calibrate_run(run, data=str(test_csv), threshold="f1" if len(classes) == 2 else "none")

    result = evaluate_run(run, data=str(test_csv), report=True, report_dir=tmp_path / "report", base_sample=10)
    out = tmp_path / "report"
    page = (out / "report.html").read_text()
    for section in ("Headline metrics", "Is the transformer worth it here?", "Calibration", "Before and after fine-tuning",
                    "Plots", "Error analysis", "most confident mistakes", "truncated"):
        assert section in page
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["confusion_matrix.png", "roc_pr.png", "reliability.png", "scores.png", "training.png", "length.png"])
    assert all(_valid_png((out / p).read_bytes()) for p in pngs)
    inline = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(inline) == len(pngs) and all(_valid_png(base64.b64decode(d)) for d in inline)
    refs = re.findall(r'(?:href|src)="([^"]+)"', page)
    local = [r for r in refs if not r.startswith(("data:", "http:", "https:", "#"))]
    assert sorted(local) == pngs and all((out / r).is_file() for r in local)  # every link resolves

    summary = json.loads((out / "report.json").read_text())
    assert summary["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert summary["base"]["rows"] == 10 and summary["n"] == 30
    assert summary["baseline"] == result["baseline"] and summary["baseline"]["metrics"]["n"] == 30
    lo, hi = summary["bootstrap_95ci"]["accuracy"]
    assert lo <= summary["metrics"]["accuracy"] <= hi
    assert sum(t["rows"] for t in summary["truncation"]) == 30
    assert summary["temperature"] != 1.0 and (summary["threshold"] is not None) == (len(classes) == 2)
    if len(classes) > 2:
        assert "weighted avg" in page and "macro avg" in page


def test_cli_evaluate_writes_report(trained_run, tmp_path):
    shutil.copytree(trained_run("bert"), tmp_path / "run")
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--report-dir", str(tmp_path / "rep"), "--base-sample", "0"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "report written to" in r.output and "ece" in r.output
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "not calibrated" in page and "Before and after" not in page  # --base-sample 0: no base model


def test_report_escapes_review_text(trained_run, tmp_path):
    """A review is data, never markup: the template autoescapes it (and the note) in report.html."""
    run = trained_run("bert")
    texts = [f'Review {i}: <script>alert("x")</script> & <b>bold</b>' for i in range(12)]
    y = np.arange(12) % 2
    logits = np.where(np.eye(2)[1 - y] == 1, 3.0, -3.0)  # every row confidently wrong: all are "mistakes"
    path = write_report(tmp_path / "rep", run_dir=run, clf=Classifier.load(run), data_origin="<data>.csv", texts=texts,
                        labels=y, logits=logits, note="<img src=x onerror=alert(1)>")
    page = path.read_text()
    assert "<script" not in page and "<b>bold" not in page and "<img src=x" not in page
    # The mistakes table shows each word in its own shaded span: the pieces are escaped one by one.
    assert '">&lt;</span><span style="' in page and '">script</span>' in page and '">&amp;</span>' in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<code>&lt;data&gt;.csv</code>" in page
    assert "<b>" in page  # the template's own markup (the bold headline column) is not escaped


def test_report_shows_the_baseline_only_when_given(trained_run, tmp_path):
    run = trained_run("bert")
    y = np.arange(12) % 2
    logits = np.where(np.eye(2)[y] == 1, 2.0, -2.0)  # every row right: accuracy 1
    texts = [f"review {i}" for i in range(12)]
    baseline = {"name": "TF-IDF 1-2 grams + logistic regression", "train_n": 36, "fit_seconds": 0.3,
                "metrics": {"n": 12, "accuracy": 0.75, "f1": 0.7}}
    page = write_report(tmp_path / "with", run_dir=run, clf=Classifier.load(run), data_origin="t.csv", texts=texts,
                        labels=y, logits=logits, baseline=baseline).read_text()
    said = " ".join(page.split())
    assert "Is the transformer worth it here?" in page and "own 36 training texts" in said
    assert ("sentilora beats the TF-IDF + logistic-regression baseline by 25.0 points (1.0000 vs 0.7500; "
            "the baseline fitted in 0.3 s).") in said
    assert "<td>accuracy</td><td>1.0000</td><td>0.7500</td><td>+0.2500</td>" in page
    assert "<td>F1</td><td>1.0000</td><td>0.7000</td><td>+0.3000</td>" in page
    page = write_report(tmp_path / "without", run_dir=run, clf=Classifier.load(run), data_origin="t.csv", texts=texts,
                        labels=y, logits=logits).read_text()
    assert "worth it" not in page and "TF-IDF" not in page


def test_bootstrap_intervals():
    y = np.array([0, 1] * 200)
    assert bootstrap_ci(y, y, n_classes=2) == {"accuracy": (1.0, 1.0), "f1": (1.0, 1.0)}
    rng = np.random.default_rng(0)
    pred = np.where(rng.random(400) < 0.8, y, 1 - y)
    ci = bootstrap_ci(pred, y, n_classes=2, seed=3)
    assert ci == bootstrap_ci(pred, y, n_classes=2, seed=3)  # seeded
    lo, hi = ci["accuracy"]
    assert lo < (pred == y).mean() < hi and 0.04 < hi - lo < 0.12  # about ±1.96·sqrt(.8·.2/400) = ±0.04
    y3 = np.arange(300) % 3
    lo, hi = bootstrap_ci(y3, np.where(rng.random(300) < 0.7, y3, (y3 + 1) % 3), n_classes=3)["f1"]
    assert 0.55 < lo < hi < 0.85


def test_error_analysis_helpers():
    y = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55], [0.3, 0.7]])
    pred = probs.argmax(axis=1)
    assert confident_mistakes(y, probs, pred).tolist() == [1, 3]  # wrong at .8, then at .55
    groups = truncation_errors(y, pred, np.array([True, True, False, False, False]))
    assert groups[0] == {"group": "untruncated", "rows": 3, "errors": 1, "error_rate": 1 / 3, "share_of_errors": 0.5}
    assert groups[1]["errors"] == 1 and groups[1]["share_of_errors"] == 0.5
    bucket, names = length_buckets(np.array([10, 64, 65, 256, 257, 5000]), 256)
    assert bucket.tolist() == [0, 0, 1, 2, 3, 5] and names[2] == "129–256" and names[-1] == ">1024"
    assert excerpt("a<br /><br />b") == "a b"
    long = excerpt("start " + "x " * 500 + "the end")
    assert long.startswith("start") and long.endswith("the end") and " … " in long and len(long) < 400


def test_mistakes_are_shaded_by_what_drove_the_wrong_label(trained_run, tmp_path):
    run = trained_run("bert")
    texts = [f"Review {i}: the plot was dull but the cast was great." for i in range(12)]
    y = np.arange(12) % 2
    logits = np.where(np.eye(2)[1 - y] == 1, 3.0, -3.0)  # every row confidently wrong
    page = write_report(tmp_path / "rep", run_dir=run, clf=Classifier.load(run), data_origin="d.csv", texts=texts,
                        labels=y, logits=logits).read_text()
    assert "what drove the wrong label" in page
    shaded = re.findall(r'<span style="background:rgba\((?:46,160,67|215,58,73),[\d.]+\)">(\w+)</span>', page)
    assert {"plot", "dull", "cast", "great"} <= set(shaded)


def test_highlighted_excerpt_flattens_breaks_and_cuts_long_texts():
    text = "Good<br /><br />film"
    words = [Word(0, 4, "Good", 1.0), Word(4, 5, "<", 0.1), Word(5, 7, "br", 0.1), Word(8, 9, "/", 0.0),
             Word(9, 10, ">", 0.1), Word(10, 11, "<", 0.1), Word(11, 13, "br", 0.1), Word(14, 15, "/", 0.1),
             Word(15, 16, ">", 0.1), Word(16, 20, "film", -0.5)]
    pieces = highlighted_excerpt(text, words)
    assert "".join(p["text"] for p in pieces) == "Good film"
    assert pieces[0]["style"] == "background:rgba(46,160,67,0.75)" and "215,58,73,0.38" in pieces[-1]["style"]
    long = " ".join(["word"] * 300)
    many = [Word(5 * i, 5 * i + 4, "word", None if 20 < i < 280 else 0.5) for i in range(300)]
    cut = highlighted_excerpt(long, many)
    shown = "".join(p["text"] for p in cut)
    assert " … " in shown and len(shown) < 400 and shown.startswith("word word") and shown.endswith("word word")
    assert any(p["style"] and "line-through" in p["style"] for p in cut)  # unread words are struck through


def test_report_of_a_run_that_held_no_validation_out(tiny_models, tmp_path):
    """Under 1,000 rows nothing is held out by default: history.json's epochs have no scores. The report is
    written all the same, its training figure the training loss alone, with a note saying why."""
    from conftest import tiny_config

    from sentilora.train import train

    make_rows(48, ["negative", "positive"], seed=1).to_csv(tmp_path / "train.csv", index=False)
    make_rows(24, ["negative", "positive"], seed=2).to_csv(tmp_path / "test.csv", index=False)
    cfg = tiny_config(tiny_models["bert"], tmp_path / "train.csv", tmp_path / "test.csv",
                      **{"train.epochs": 1, "data.min_held_out": 100})
    run = train(cfg, tmp_path / "run", progress=False).run_dir
    assert all(set(e) == {"epoch", "step"} for e in json.loads((run / "history.json").read_text())["epochs"])

    r = CliRunner().invoke(app, ["evaluate", str(run), "--report", "--base-sample", "0", "--no-baseline"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "metrics.json").read_text())["metrics"]["n"] == 24
    page = (run / "report" / "report.html").read_text()
    assert "No validation texts were held out, so there are no per-epoch validation scores." in " ".join(page.split())
    assert _valid_png((run / "report" / "training.png").read_bytes())
