"""What the head reads (--model.pooling) and the small-data rule (--data.min_held_out, --train.min_steps)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config

from sentilora import Classifier
from sentilora.bundle import merge_bundle
from sentilora.data import load_data
from sentilora.errors import DataError
from sentilora.evaluate import evaluate_run
from sentilora.export import export_onnx
from sentilora.heads import centroid_head, logistic_head, resolve_pooling
from sentilora.model import load_base_model, load_tokenizer
from sentilora.train import train

# The heads are fitted on CPU features and written into a head that may live on a GPU (init_head moves the
# model first); the cuda case runs where one is present (the device machine), and is skipped elsewhere.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]

TEXTS = ["The movie was great and wonderful.", "Awful, boring, the worst plot and a dull scene.", "film"]


def _batch(model_dir, texts):
    tok = load_tokenizer(str(model_dir))
    return tok(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_mean_pooling_reads_all_tokens_and_ignores_padding(tiny_models, arch):
    torch.manual_seed(0)
    mean, _ = load_base_model(str(tiny_models[arch]), ["negative", "positive"], pooling="mean")
    torch.manual_seed(0)
    cls, _ = load_base_model(str(tiny_models[arch]), ["negative", "positive"], pooling="cls")
    mean.eval(), cls.eval()
    batch = _batch(tiny_models[arch], TEXTS)
    with torch.no_grad():
        together = mean(**batch).logits
        alone = torch.cat([mean(**_batch(tiny_models[arch], [t])).logits for t in TEXTS])
        first_token = cls(**batch).logits
    # The shortest text is padded in the batch: its logits must not change with the padding.
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(together, first_token, atol=1e-3), "mean pooling changed nothing"
    if arch == "bert":  # the head reads the masked mean in place of the pooler's output
        with torch.no_grad():
            hidden = mean.base_model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            expected = mean.classifier((hidden * m).sum(1) / m.sum(1))
        torch.testing.assert_close(together, expected, atol=1e-5, rtol=0)


def test_auto_pooling_follows_the_sentence_transformers_config(tiny_models, tmp_path):
    st = tmp_path / "st-model"
    shutil.copytree(tiny_models["bert"], st)
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    assert resolve_pooling(str(st), "auto") == "mean"
    assert resolve_pooling(str(st), "cls") == "cls"
    assert resolve_pooling(str(tiny_models["bert"]), "auto") == "cls"
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    assert resolve_pooling(str(st), "auto") == "cls"


def test_a_mean_pooled_run_predicts_alike_after_reload_merge_and_export(tiny_models, dataset, tmp_path):
    train_csv, test_csv = dataset()
    run = tmp_path / "run"
    result = train(tiny_config(tiny_models["distilbert"], train_csv, test_csv, **{"model.pooling": "mean"}), run, progress=False)
    assert json.loads((run / "sentilora.json").read_text())["pooling"] == "mean"
    # The reloaded bundle reproduces the validation loss training saw: it pools as training did.
    val = evaluate_run(run, split="validation", precision="fp32", baseline=False)["metrics"]
    assert val["loss"] == pytest.approx(result.best_metrics["loss"], abs=1e-6)

    loaded = Classifier.load(run, precision="fp32", merge=False).logits(TEXTS)
    merged = Classifier.load(merge_bundle(run, tmp_path / "merged"), precision="fp32").logits(TEXTS)
    np.testing.assert_allclose(merged, loaded, atol=1e-4)
    export_onnx(run, tmp_path / "onnx", texts=TEXTS * 5)  # the mean is part of the traced graph
    reference = Classifier.load(run, precision="fp32", merge=False).predict_proba(TEXTS)
    np.testing.assert_allclose(Classifier.load(tmp_path / "onnx").predict_proba(TEXTS), reference, atol=1e-4)

    as_cls = tmp_path / "as-cls"  # the same weights read through the first token predict otherwise
    shutil.copytree(run, as_cls)
    manifest = json.loads((as_cls / "sentilora.json").read_text())
    (as_cls / "sentilora.json").write_text(json.dumps({**manifest, "pooling": "cls"}))
    assert not np.allclose(Classifier.load(as_cls, precision="fp32", merge=False).logits(TEXTS), loaded, atol=1e-3)


def test_a_small_training_set_holds_nothing_out_and_takes_min_steps(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset(n_train=48)  # 12 held out at 25%: under the default 100
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv,
                      **{"data.min_held_out": 100, "train.min_steps": 15, "train.epochs": 1})
    with caplog.at_level(logging.INFO, logger="sentilora.train"):
        result = train(cfg, tmp_path / "run", progress=False)
    # the user's --train.epochs 1 is overridden: a warning that says so and how to keep it
    raised = [r for r in caplog.records if "3 epochs instead of 1" in r.getMessage()]
    assert raised and raised[0].levelno == logging.WARNING and "--train.min_steps 0" in raised[0].getMessage()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # 48 texts in batches of 8: 6 steps per epoch, so 3 epochs to take 15 steps; the last epoch is kept.
    assert result.steps == 18 and len(history["epochs"]) == 3 and history["best_epoch"] == 3
    assert history["train_samples"] == 48 * 3 and "accuracy" not in history["epochs"][-1]
    with pytest.raises(DataError, match="no validation texts"):
        evaluate_run(tmp_path / "run", split="validation")
    assert evaluate_run(tmp_path / "run", split="test", baseline=False)["metrics"]["n"] == 24


@pytest.mark.parametrize(("rows", "held_out"), [(600, 0), (999, 0), (1000, 100)])
def test_the_carve_out_needs_min_held_out_texts(dataset, tmp_path, rows, held_out, caplog):
    from sentilora.config import Config

    train_csv, _ = dataset(n_train=rows)
    cfg = Config().override({"data.source": str(train_csv), "data.val_fraction": 0.1})
    with caplog.at_level(logging.INFO, logger="sentilora.data"):
        data = load_data(cfg.data, need=("train", "validation"))
    carved = "10% held out" if held_out else "none held out"  # the file named once, with what was carved from it
    assert f"validation rows from {train_csv} ({carved}) (2 classes" in caplog.text
    assert len(data.splits["validation"].labels) == held_out
    assert len(data.splits["train"].labels) == rows - held_out


@pytest.mark.parametrize("device", DEVICES)
def test_centroid_head_starts_as_a_nearest_class_mean_classifier(tiny_models, device):
    model, _ = load_base_model(str(tiny_models["bert"]), ["a", "b", "c"], pooling="mean")
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 32, generator=gen) * 3
    labels = [i % 3 for i in range(60)]
    features = centres[labels] + torch.randn(60, 32, generator=gen)
    centroid_head(model.classifier.to(device), features, labels)
    model.classifier.cpu()
    with torch.no_grad():
        scores = model.classifier(features)
    nearest = torch.cdist(features, torch.stack([features[torch.tensor(labels) == c].mean(0) for c in range(3)])).argmin(1)
    assert (scores.argmax(1) == nearest).float().mean() > 0.95 and (scores.argmax(1) == torch.tensor(labels)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_head_gives_the_fitted_regressions_probabilities(tiny_models, n_classes, device):
    from sklearn.linear_model import LogisticRegression

    names = ["a", "b", "c"][:n_classes]
    model, _ = load_base_model(str(tiny_models["bert"]), names, pooling="mean")
    gen = torch.Generator().manual_seed(1)
    labels = [i % n_classes for i in range(60)]
    features = torch.randn(n_classes, 32, generator=gen)[labels] + 2 * torch.randn(60, 32, generator=gen)
    logistic_head(model.classifier.to(device), features, labels, seed=0)
    with torch.no_grad():
        probs = model.classifier.cpu()(features).softmax(-1).numpy()
    x = features.double().numpy()
    scale = np.linalg.norm(x, axis=1).mean()
    expected = LogisticRegression(max_iter=1000, random_state=0).fit(x / scale, labels).predict_proba(x / scale)
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_logistic_head_puts_a_class_without_examples_last(tiny_models):
    model, _ = load_base_model(str(tiny_models["bert"]), ["a", "b", "c"], pooling="mean")
    features = torch.randn(40, 32, generator=torch.Generator().manual_seed(2))
    labels = [0 if f[0] > 0 else 2 for f in features]  # no "b"
    logistic_head(model.classifier, features, labels, seed=0)
    with torch.no_grad():
        scores = model.classifier(features)
    assert (scores.argmin(1) == 1).all() and (scores.argmax(1) == torch.tensor(labels)).float().mean() > 0.9


def test_training_can_start_from_class_prototypes(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"model.head_init": "prototypes", "model.pooling": "mean"})
    with caplog.at_level("INFO", logger="sentilora.heads"):
        train(cfg, tmp_path / "run", progress=False)
    assert "head started from the class means of 36 training texts" in caplog.text
