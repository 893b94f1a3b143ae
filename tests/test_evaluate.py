from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from sentilora.metrics import compute_metrics


def test_binary_metrics_match_hand_counts():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = compute_metrics(y, probs, n_classes=2)
    # predictions 0,1,1,1,0: TP=2, FP=1, FN=1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    # ROC-AUC: positive scores .8,.7,.4 vs negative .1,.6 -> 5 of 6 pairs ordered right
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7, 0.4])))
    assert "per_class" not in m


def test_multiclass_reports_macro_and_per_class():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    m = compute_metrics(y, probs, n_classes=3, label_names=["neg", "neu", "pos"])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["neg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_class"]["pos"]["recall"] == pytest.approx(0.5) and m["per_class"]["neu"]["f1"] == 0.0
    assert m["f1"] == pytest.approx(np.mean([1.0, 0.0, 0.5]))
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_roc_auc_is_none_when_a_class_is_absent():
    m = compute_metrics(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), n_classes=2)
    assert m["roc_auc"] is None and m["accuracy"] == 0.5


# ---- the TF-IDF baseline beside the model ------------------------------------------------------


def test_baseline_fits_and_scores_every_class():
    from conftest import make_rows

    from sentilora.baseline import fit_baseline

    df = make_rows(60, ["negative", "neutral", "positive"], seed=1)
    y = df.label.map({"negative": 0, "neutral": 1, "positive": 2}).tolist()
    b = fit_baseline(df.text.tolist(), y, n_classes=4, seed=0)  # class 3 has no training rows
    probs = b.predict_proba(["A great and wonderful film.", "Awful, boring plot."])
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1) and (probs[:, 3] == 0).all()
    assert probs.argmax(axis=1).tolist() == [2, 0] and b.train_n == 60 and b.fit_seconds > 0


@pytest.mark.parametrize(("model", "base", "expect"), [
    (0.9, 0.8, "sentilora beats the TF-IDF + logistic-regression baseline by 10.0 points (0.9000 vs 0.8000; the baseline fitted in 1.2 s)."),
    (0.8, 0.8, ("The TF-IDF + logistic-regression baseline is as good or better here (accuracy 0.8000 vs 0.8000, fitted in under "
                "0.1 s): the transformer is not worth it on this data yet; more labelled data usually changes that.")),
])
def test_baseline_verdict(model, base, expect):
    from sentilora.baseline import verdict

    assert verdict(model, {"metrics": {"accuracy": base}, "fit_seconds": 1.23 if model > base else 0.02}) == expect


def test_evaluate_shows_the_baseline_beside_the_model(trained_run, tmp_path):
    from rich.console import Console

    from sentilora.evaluate import evaluate_run, metrics_table

    result = evaluate_run(trained_run("bert"), output=tmp_path / "m.json")
    b = result["baseline"]
    assert b["metrics"]["n"] == result["metrics"]["n"] == 24 and b["fit_seconds"] > 0
    assert b["train_n"] == 36 and b["name"] == "TF-IDF 1-2 grams + logistic regression"  # the 48 rows less the 25% validation
    assert json.loads((tmp_path / "m.json").read_text())["baseline"] == b
    console = Console(width=120, record=True)
    console.print(metrics_table(result))
    assert "TF-IDF + LR" in console.export_text()
    assert "baseline" not in evaluate_run(trained_run("bert"), output=tmp_path / "m.json", baseline=False)
    assert "baseline" not in json.loads((tmp_path / "m.json").read_text())


def test_no_baseline_when_the_training_data_is_gone(trained_run, tmp_path, caplog):
    from sentilora.config import Config
    from sentilora.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(trained_run("bert"), run)
    cfg = Config.from_yaml(run / "config.yaml").override({"data.source": str(tmp_path / "gone.csv")})
    (run / "config.yaml").write_text(cfg.to_yaml())
    with caplog.at_level(logging.INFO, logger="sentilora.evaluate"):
        result = evaluate_run(run, data=str(trained_run("bert").parent / "test.csv"))
    assert "baseline" not in result and result["metrics"]["n"] == 24
    assert "no TF-IDF baseline: the run's training data is not available" in caplog.text


def test_cli_evaluate_prints_the_verdict(trained_run, tmp_path):
    from typer.testing import CliRunner

    from sentilora.baseline import verdict
    from sentilora.cli import app

    r = CliRunner().invoke(app, ["evaluate", str(trained_run("bert")), "--output", str(tmp_path / "m.json")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "m.json").read_text())
    said = " ".join(r.output.split())  # the console wraps long lines
    model, base = result["metrics"]["accuracy"], result["baseline"]["metrics"]["accuracy"]
    assert "TF-IDF + LR" in r.output and verdict(model, result["baseline"]) in said
    assert "baseline" in said and f"{model:.4f}" in said and f"{base:.4f}" in said

    r = CliRunner().invoke(app, ["evaluate", str(trained_run("bert")), "--output", str(tmp_path / "m.json"), "--no-baseline"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "TF-IDF" not in r.output and "baseline" not in json.loads((tmp_path / "m.json").read_text())


def test_train_warns_when_the_training_set_is_small(tiny_models, dataset, tmp_path, caplog):
    """48 rows: 18 per class after the validation carve-out, and 12 validation texts."""
    from conftest import tiny_config

    from sentilora.train import train

    train_csv, test_csv = dataset()
    with caplog.at_level(logging.WARNING, logger="sentilora.train"):
        train(tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.epochs": 1}), tmp_path / "run", progress=False)
    said = [r.getMessage() for r in caplog.records if r.name == "sentilora.train"]
    assert any(m.startswith("only 18 training texts of class 'negative', the smallest: expect an unreliable model")
               and "sentilora evaluate" in m for m in said)
    assert "validation on 12 texts: the best-epoch choice is noise" in said


def test_evaluate_reads_long_texts_as_predict_does(trained_run, tmp_path):
    """--long-texts chunk measures the model the way `predict --long-texts chunk` uses it: every token,
    in windows of the reading length, logits averaged; the report then marks no text as truncated."""
    from typer.testing import CliRunner

    from sentilora.cli import app
    from sentilora.evaluate import evaluate_run, load_eval_split

    from safetensors.torch import load_file, save_file

    from sentilora.heads import head_inputs

    # The tiny run's head gives every text about the same output. Point it along how the texts' encodings
    # differ (centred, so the outputs spread around 0.5), so that the two readings visibly differ.
    run = tmp_path / "run"
    shutil.copytree(trained_run("bert"), run)
    clf, part, _ = load_eval_split(run, max_length=8, precision="fp32")
    with head_inputs(clf.model) as seen:
        clf.logits(part.texts)
    states = torch.cat([s.detach() for s in seen])
    centre, apart = states.mean(0), states[0] - states.mean(0)
    w = 3 * apart / apart.norm() ** 2
    path = run / "adapter" / "adapter_model.safetensors"
    weights = load_file(path)
    weights["base_model.model.classifier.weight"] = torch.stack([-w, w])
    weights["base_model.model.classifier.bias"] = torch.stack([w @ centre, -(w @ centre)])
    save_file(weights, path)
    clf, part, _ = load_eval_split(run, max_length=8)
    y = np.asarray(part.labels)
    chunk = clf.predict_proba(part.texts, long_texts="chunk")
    truncate = clf.predict_proba(part.texts)
    assert np.abs(chunk - truncate).max() > 0.05  # 8 tokens cut these texts, so the two readings differ

    result = evaluate_run(run, max_length=8, long_texts="chunk", output=tmp_path / "m.json", baseline=False,
                          report_dir=tmp_path / "rep", report=True, base_sample=0)
    assert result["reads"] == {"max_length": 8, "long_texts": "chunk"}
    assert result["metrics"]["accuracy"] == pytest.approx(float((chunk.argmax(axis=1) == y).mean()))
    assert result["metrics"]["loss"] == pytest.approx(compute_metrics(y, chunk, n_classes=2)["loss"], rel=1e-4)
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "every token, in windows of 8" in page and "✂" not in page and "Errors in truncated" not in page

    plain = evaluate_run(run, max_length=8, output=tmp_path / "t.json", baseline=False)
    assert plain["metrics"]["loss"] == pytest.approx(compute_metrics(y, truncate, n_classes=2)["loss"], rel=1e-4)

    r = CliRunner().invoke(app, ["evaluate", str(run), "--long-texts", "windows", "--output", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "--long-texts" in r.output and not (tmp_path / "x.json").exists()


def _error_line(r) -> str:
    """The one line a user error prints (exit code 2)."""
    message = " ".join(r.output.split())
    assert r.exit_code == 2 and message.startswith("error:") and r.output.strip().count("\n") == 0, r.output
    return message


def test_evaluate_refuses_an_unknown_split(trained_run, tmp_path):
    """--split names a split that exists: a run's test file has none by name, a folder's are listed."""
    from typer.testing import CliRunner

    from sentilora.cli import app

    run = trained_run("bert")
    invoke = CliRunner().invoke
    said = _error_line(invoke(app, ["evaluate", str(run), "--split", "bogus", "--output", str(tmp_path / "m.json")]))
    assert "--split bogus" in said and "choose test, validation or train" in said
    assert not (tmp_path / "m.json").exists()

    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("train", "test", "holdout"):
        shutil.copy(run.parent / ("test.csv" if name == "holdout" else f"{name}.csv"), folder / f"{name}.csv")
    said = _error_line(invoke(app, ["evaluate", str(run), "--data", str(folder), "--split", "bogus", "--no-baseline"]))
    assert "no split 'bogus' (available: holdout, test, train)" in said and "--split" in said and "--data." not in said
    r = invoke(app, ["evaluate", str(run), "--data", str(folder), "--split", "holdout", "--no-baseline",
                     "--output", str(tmp_path / "m.json")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["split"] == "holdout" and result["data"].endswith("holdout.csv") and result["metrics"]["n"] == 24


def test_evaluate_and_calibrate_errors_name_their_own_options(trained_run, tmp_path):
    """load_data's hints name train's --data.* flags; evaluate and calibrate take --data, --text-column and --label-column."""
    import pandas as pd
    from typer.testing import CliRunner

    from sentilora.cli import app
    from sentilora.config import Config

    run = tmp_path / "run"
    shutil.copytree(trained_run("bert"), run)
    test_csv = trained_run("bert").parent / "test.csv"
    pd.read_csv(test_csv).rename(columns={"text": "review"}).to_csv(tmp_path / "wrongcol.csv", index=False)
    invoke = CliRunner().invoke
    for command in ("evaluate", "calibrate"):
        said = _error_line(invoke(app, [command, str(run), "--data", str(tmp_path / "wrongcol.csv")]))
        assert "no column 'text'" in said and "Set --text-column (and --label-column) to the right names." in said

    cfg = Config.from_yaml(run / "config.yaml").override({"data.test_file": None})
    (run / "config.yaml").write_text(cfg.to_yaml())  # a run trained without a test file
    said = _error_line(invoke(app, ["evaluate", str(run), "--no-baseline"]))
    assert "no split 'test'" in said and "Pass labelled texts with --data FILE." in said and "--data." not in said


def test_a_file_given_to_evaluate_is_scored_whole(tmp_path):
    """--data.n_eval subsamples the run's own evaluation data for speed; a file passed with --data is read whole."""
    from sentilora.config import Config
    from sentilora.evaluate import eval_data_config

    run_cfg = Config().override({"data.source": "imdb-sample", "data.n_eval": 40})
    (tmp_path / "val.csv").write_text("text,label\na,pos\n")
    given, _ = eval_data_config(run_cfg, data=str(tmp_path / "val.csv"), split="test", text_column=None, label_column=None)
    own, _ = eval_data_config(run_cfg, data=None, split="test", text_column=None, label_column=None)
    assert given.n_eval is None and own.n_eval == 40
