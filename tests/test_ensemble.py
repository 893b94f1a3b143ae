"""--train.ensemble: several models trained with different seeds, kept all; prediction averages their probabilities."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from sentilora.bundle import MANIFEST, Manifest
from sentilora.cli import app
from sentilora.config import Config
from sentilora.errors import BundleError
from sentilora.predict import Classifier
from sentilora.serve import ServeSettings, load_models
from sentilora.train import train

TEXTS = ["great wonderful film", "the worst, boring plot", "fine", "not good, not bad, just long and slow"]


@pytest.fixture(scope="module")
def ensemble_run(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble")
    from conftest import make_rows

    make_rows(48, ["negative", "positive"], seed=1).to_csv(folder / "train.csv", index=False)
    make_rows(24, ["negative", "positive"], seed=2).to_csv(folder / "test.csv", index=False)
    cfg = tiny_config(tiny_models["bert"], folder / "train.csv", folder / "test.csv",
                      **{"train.ensemble": 2, "train.max_minutes": 10})
    logger = logging.getLogger("sentilora.train")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = train(cfg, folder / "run", progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return folder / "run", result, "\n".join(records)


def test_an_ensemble_run_keeps_every_model_and_predicts_with_their_mean_probabilities(ensemble_run):
    run, result, log_text = ensemble_run
    members = [run / "members" / "seed-42", run / "members" / "seed-43"]
    man = Manifest.read(run)
    assert man.kind == "ensemble" and man.members == ["members/seed-42", "members/seed-43"]
    assert not (run / "adapter").exists()  # the members hold the weights
    history = json.loads((run / "history.json").read_text())
    assert [m["seed"] for m in history["ensemble"]["members"]] == [42, 43]
    assert result.models == 2 and result.combined == "ensemble" and result.best_metrics == history["ensemble"]["validation"]
    assert "2 models will be trained" in log_text and "ensemble of 2 models: validation accuracy" in log_text
    each = [Classifier.load(m, precision="fp32").predict_proba(TEXTS) for m in members]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # two seeds, two models
    for merge in (True, False):
        got = Classifier.load(run, precision="fp32", merge=merge).predict_proba(TEXTS)
        np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-5)


def test_evaluate_calibrate_and_serve_read_an_ensemble(ensemble_run, two_runs, tmp_path):
    run = ensemble_run[0]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(copy), "--no-baseline"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output
    r = runner.invoke(app, ["calibrate", str(copy)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    man = Manifest.read(copy)
    assert man.kind == "ensemble" and man.members and man.temperature != 1.0  # calibration kept the members
    served = load_models({"ens": str(copy), "a": two_runs["a"]}, ServeSettings(precision="fp32"))
    assert served["ens"].kind == "ensemble"
    want = Classifier.load(copy, precision="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(served["ens"].classifier.predict_proba(TEXTS), want, atol=1e-5)


def test_an_ensemble_cannot_be_merged_or_saved_as_one_model(ensemble_run, tmp_path):
    run = ensemble_run[0]
    r = CliRunner().invoke(app, ["merge", str(run), str(tmp_path / "merged")])
    assert r.exit_code == 2 and "ensemble of 2 models" in r.output and "cannot be folded" in r.output
    assert "--train.ensemble 1" in " ".join(r.output.split())  # the way to a model that merges
    assert not (tmp_path / "merged").exists()
    with pytest.raises(BundleError, match="saved as its run folder"):
        Classifier.load(run, precision="fp32").save(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_an_altered_ensemble_bundle_is_refused_in_one_line(ensemble_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ensemble_run[0], copy)
    raw = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**raw, "members": []}))
    with pytest.raises(BundleError, match="lists no models"):
        Classifier.load(copy)
    shutil.rmtree(copy / "members" / "seed-43")
    (copy / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="a model of this ensemble is missing"):
        Classifier.load(copy)


def test_an_interrupted_ensemble_resumes_without_training_again(ensemble_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ensemble_run[0], copy)
    before = Classifier.load(copy, precision="fp32").predict_proba(TEXTS)
    # as if stopped before the models were combined: the manifest is still the first model's
    shutil.copy2(copy / "members" / "seed-42" / MANIFEST, copy / MANIFEST)
    history = json.loads((copy / "history.json").read_text())
    del history["ensemble"]
    (copy / "history.json").write_text(json.dumps(history))
    first = (copy / "members" / "seed-43" / "adapter" / "adapter_model.safetensors").read_bytes()
    result = train(Config(), copy, resume=True, progress=False)
    assert result.models == 2 and Manifest.read(copy).kind == "ensemble"
    assert (copy / "members" / "seed-43" / "adapter" / "adapter_model.safetensors").read_bytes() == first  # not retrained
    np.testing.assert_allclose(Classifier.load(copy, precision="fp32").predict_proba(TEXTS), before, atol=1e-6)


def test_an_ensemble_exports_to_onnx_and_passes_the_parity_gate(ensemble_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from sentilora.export import export_onnx

    run = ensemble_run[0]
    check = export_onnx(run, tmp_path / "onnx", texts=TEXTS * 5)
    assert check["passed"] and check["label_agreement"] >= 0.995 and check["max_prob_diff"] < 1e-3
    onnx = Classifier.load(tmp_path / "onnx")
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), Classifier.load(run, precision="fp32").predict_proba(TEXTS), atol=1e-4)


def test_an_ensemble_explains_its_averaged_prediction(ensemble_run):
    clf = Classifier.load(ensemble_run[0], precision="fp32")
    (e,) = clf.explain("a great and wonderful film", steps=64)
    assert e.predicted == clf.predict("a great and wonderful film") and [w.word for w in e.words][:2] == ["a", "great"]
    assert abs(e.gap) < 0.05 * max(1.0, abs(e.logit - e.baseline_logit))  # integrated gradients add up through the average
