"""--train.baseline_blend: the TF-IDF baseline mixed into a bundle's probabilities at a weight chosen on validation."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from conftest import make_rows, tiny_config
from typer.testing import CliRunner

from sentilora.baseline import BLEND_FILE, BLEND_WEIGHTS, blend, choose_weight, fit_baseline, load_baseline
from sentilora.bundle import Manifest, merge_bundle
from sentilora.cli import app
from sentilora.config import Config
from sentilora.predict import Classifier
from sentilora.recipe import BLEND_MIN_HELD_OUT, resolve
from sentilora.train import train

TEXTS = ["great wonderful film", "the worst, boring plot", "fine", "not good, not bad, just long and slow"]


@pytest.fixture(scope="module")
def blended_run(tiny_models, tmp_path_factory):
    """A run whose model learns next to nothing (lr 1e-6) on rows whose sentiment words give the class away:
    the baseline is right where the model guesses, so the blend takes the largest weight tried."""
    folder = tmp_path_factory.mktemp("blend")
    make_rows(64, ["negative", "positive"], seed=1).to_csv(folder / "train.csv", index=False)
    make_rows(24, ["negative", "positive"], seed=2).to_csv(folder / "test.csv", index=False)
    cfg = tiny_config(tiny_models["bert"], folder / "train.csv", folder / "test.csv",
                      **{"train.baseline_blend": "on", "train.lr": 1e-6, "train.epochs": 1})
    train(cfg, folder / "run", progress=False)
    return folder


def test_choose_weight_keeps_the_model_alone_unless_the_baseline_lowers_the_loss():
    y = np.array([0, 1, 0, 1, 0, 1])
    model = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    assert choose_weight(model, np.full((6, 2), 0.5), y)[0] == 0.0  # a baseline that knows nothing
    right = np.eye(2)[y] * 0.9 + 0.05  # a baseline right on every text, where the model misses two
    weight, losses = choose_weight(model, right, y)
    assert weight > 0 and len(losses) == len(BLEND_WEIGHTS) and min(losses) < losses[0]
    assert np.allclose(blend(model, right, 0.0), model) and np.allclose(blend(model, right, 1.0), right)


def test_a_saved_baseline_predicts_what_it_did_when_fitted(tmp_path):
    rows = make_rows(60, ["negative", "neutral", "positive"], seed=3)
    labels = rows.label.map({"negative": 0, "neutral": 1, "positive": 2}).tolist()
    fitted = fit_baseline(rows.text.tolist(), labels, n_classes=3, seed=0)
    fitted.save(tmp_path / BLEND_FILE)
    again = load_baseline(tmp_path / BLEND_FILE)
    assert np.allclose(fitted.predict_proba(TEXTS), again.predict_proba(TEXTS))
    assert again.predict_proba(TEXTS).shape == (4, 3)


def test_a_blended_run_predicts_the_mix_of_model_and_baseline(blended_run):
    run = blended_run / "run"
    man, info = Manifest.read(run), json.loads((run / "history.json").read_text())["baseline_blend"]
    assert man.baseline_weight == info["weight"] == max(BLEND_WEIGHTS)
    assert info["blend"]["loss"] < info["model"]["loss"]
    clf = Classifier.load(run, device="cpu", precision="fp32")
    alone = Classifier(clf.model, clf.tokenizer, dataclasses.replace(man, baseline_weight=0.0), device="cpu", precision="fp32")
    expected = blend(alone.predict_proba(TEXTS), load_baseline(run / BLEND_FILE).predict_proba(TEXTS), man.baseline_weight)
    assert np.allclose(clf.predict_proba(TEXTS), expected, atol=1e-5)
    assert clf.predict(["great wonderful film"]) == ["positive"]  # the baseline carries this near-chance model


def test_merge_and_onnx_export_carry_the_blend(blended_run, tmp_path):
    run = blended_run / "run"
    want = Classifier.load(run, device="cpu", precision="fp32").predict_proba(TEXTS)
    merged = merge_bundle(run, tmp_path / "merged")
    assert (merged / BLEND_FILE).is_file()
    assert np.allclose(Classifier.load(merged, device="cpu", precision="fp32").predict_proba(TEXTS), want, atol=1e-5)
    result = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert np.allclose(Classifier.load(tmp_path / "onnx").predict_proba(TEXTS), want, atol=1e-3)


def test_a_blended_bundle_without_its_baseline_file_is_refused_in_one_line(blended_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(blended_run / "run", copy)
    (copy / BLEND_FILE).unlink()
    result = CliRunner().invoke(app, ["predict", str(copy), "great film"])
    assert result.exit_code == 2
    assert f"{BLEND_FILE} is missing" in result.output and "Copy the whole folder" in result.output


def test_blend_on_without_validation_texts_warns_and_keeps_the_model_alone(tiny_models, tmp_path, caplog):
    make_rows(32, ["negative", "positive"], seed=1).to_csv(tmp_path / "train.csv", index=False)
    make_rows(8, ["negative", "positive"], seed=2).to_csv(tmp_path / "test.csv", index=False)
    cfg = tiny_config(tiny_models["bert"], tmp_path / "train.csv", tmp_path / "test.csv",
                      **{"train.baseline_blend": "on", "data.min_held_out": 1000, "train.epochs": 1})
    with caplog.at_level(logging.WARNING, logger="sentilora.train"):
        train(cfg, tmp_path / "run", progress=False)
    assert "no validation texts to choose the baseline's weight on" in caplog.text
    assert Manifest.read(tmp_path / "run").baseline_weight == 0 and not (tmp_path / "run" / BLEND_FILE).exists()


@pytest.mark.parametrize(("texts", "tokens", "held_out", "flag", "expected"), [
    (6000, 25, 700, "auto", "on"),  # full SST: many short texts, a validation set worth weighing on
    (6000, 25, BLEND_MIN_HELD_OUT - 1, "auto", "off"),  # too few validation texts to choose a weight by
    (6000, 230, 700, "auto", "off"),  # long reviews: not measured
    (500, 25, 700, "auto", "off"),  # few short texts
    (500, 25, 0, "on", "on"),  # the flag wins
    (6000, 25, 700, "off", "off"),
])
def test_preset_auto_blends_the_baseline_for_many_short_texts(texts, tokens, held_out, flag, expected):
    cfg = Config().override({"train.baseline_blend": flag})
    resolved, _ = resolve(cfg, [tokens] * texts, ["negative", "positive"], held_out=held_out)
    assert resolved.train.baseline_blend == expected


def test_evaluate_says_the_model_carries_the_baseline_it_is_compared_with(blended_run):
    result = CliRunner().invoke(app, ["evaluate", str(blended_run / "run"), "--data", str(blended_run / "test.csv")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"into its probabilities at weight {max(BLEND_WEIGHTS):g} (--train.baseline_blend)" in text


def test_cli_train_reports_the_blended_validation_accuracy(tiny_models, tmp_path):
    make_rows(64, ["negative", "positive"], seed=1).to_csv(tmp_path / "train.csv", index=False)
    result = CliRunner().invoke(app, [
        "train", "--model", str(tiny_models["bert"]), "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "run"),
        "--quiet", "--model.max_length", "32", "--train.epochs", "1", "--train.batch_size", "8", "--train.lr", "1e-6",
        "--train.precision", "fp32", "--train.device", "cpu", "--data.val_fraction", "0.25", "--data.min_held_out", "0",
        "--train.min_steps", "0", "--train.contrastive_steps", "0", "--train.baseline_blend", "on"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    info = json.loads((tmp_path / "run" / "history.json").read_text())["baseline_blend"]
    assert f"with the TF-IDF baseline mixed in at weight {info['weight']:g}: accuracy {info['blend']['accuracy']:.4f}" in text


def test_a_blended_classifier_saved_from_python_keeps_its_baseline(blended_run, tmp_path):
    clf = Classifier.load(blended_run / "run", device="cpu", precision="fp32", merge=False)
    clf.save(tmp_path / "copy")
    again = Classifier.load(tmp_path / "copy", device="cpu", precision="fp32")
    assert again.manifest.baseline_weight == clf.manifest.baseline_weight
    assert np.allclose(again.predict_proba(TEXTS), clf.predict_proba(TEXTS), atol=1e-5)


def test_serve_blends_a_model_that_shares_its_base_with_another(blended_run, two_runs):
    from sentilora.serve import ServeSettings, load_models

    run = str(blended_run / "run")
    served = load_models({"blend": run, "second": two_runs["a"]}, ServeSettings(precision="fp32"))
    assert served["blend"].kind == "adapter (shared base)"  # the batcher's own Classifier, not Classifier.load
    want = Classifier.load(run, precision="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(served["blend"].classifier.predict_proba(TEXTS), want, atol=1e-5)


def test_blend_on_texts_the_baseline_cannot_read_warns_and_keeps_the_model_alone(tiny_models, tmp_path, caplog):
    import pandas as pd

    rows = pd.DataFrame({"text": ["a b", "c d"] * 16, "label": ["negative", "positive"] * 16})  # no word of 2+ letters
    rows.to_csv(tmp_path / "train.csv", index=False)
    rows.to_csv(tmp_path / "test.csv", index=False)
    cfg = tiny_config(tiny_models["bert"], tmp_path / "train.csv", tmp_path / "test.csv",
                      **{"train.baseline_blend": "on", "train.epochs": 1})
    with caplog.at_level(logging.WARNING, logger="sentilora.train"):
        result = train(cfg, tmp_path / "run", progress=False)
    assert "it cannot be fitted on these texts (empty vocabulary" in caplog.text
    assert result.blend["weight"] == 0 and Manifest.read(tmp_path / "run").baseline_weight == 0


@pytest.mark.parametrize("stopped", ["before the baseline was fitted", "after the manifest, before history.json"])
def test_a_run_stopped_before_its_blend_resumes_to_the_same_blend(blended_run, tmp_path, stopped):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(blended_run / "run", run)
    want = Classifier.load(run, device="cpu", precision="fp32").predict_proba(TEXTS)
    history = json.loads((run / "history.json").read_text())
    info = history.pop("baseline_blend")
    (run / "history.json").write_text(json.dumps(history))
    if stopped == "before the baseline was fitted":
        (run / BLEND_FILE).unlink()
        man = Manifest.read(run)
        man.baseline_weight = 0.0
        man.save(run)
    result = train(Config(), run, resume=True, progress=False)
    assert result.blend is not None and result.blend["weight"] == info["weight"] == max(BLEND_WEIGHTS)
    assert result.blend["model"] == info["model"]  # weighed on the model alone, not on the old blend
    assert result.best_metrics == history["epochs"][history["best_epoch"] - 1] and result.steps == history["steps"]
    assert Manifest.read(run).baseline_weight == info["weight"]
    assert "baseline_blend" in json.loads((run / "history.json").read_text())
    assert np.allclose(Classifier.load(run, device="cpu", precision="fp32").predict_proba(TEXTS), want, atol=1e-5)
