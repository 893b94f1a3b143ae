"""--preset auto: the settings a user leaves unset follow the training data (sentilora.recipe)."""

from __future__ import annotations

import logging

import yaml
from conftest import tiny_config

from sentilora import recipe as R
from sentilora.config import Config
from sentilora.contrastive import AUTO_BELOW
from sentilora.train import train

SHORT, LONG = [25] * R.MANY_TEXTS, [230] * R.MANY_TEXTS
BINARY = ["negative", "positive"]
SST5 = ["very negative", "negative", "neutral", "positive", "very positive"]


def _recipe_of(cfg: Config) -> tuple:
    return cfg.lora.target_modules, cfg.lora.r, cfg.lora.alpha, cfg.train.lr, cfg.train.epochs


def test_many_short_texts_get_lora_on_every_linear_layer_and_two_epochs():
    cfg, recipe = R.resolve(Config(), SHORT, BINARY)
    assert recipe is R.MANY_SHORT and _recipe_of(cfg) == (["all"], 16, 32, 1e-3, 2)


def test_long_or_few_texts_keep_the_standard_recipe():
    for lengths in (LONG, SHORT[:-1]):
        cfg, recipe = R.resolve(Config(), lengths, BINARY)
        assert recipe is R.STANDARD and _recipe_of(cfg) == (None, 8, 16, 2e-3, 6)


def test_each_setting_the_user_gives_wins_on_its_own():
    given = Config().override({"train.epochs": 4, "lora.r": 32})
    cfg, _ = R.resolve(given, SHORT, BINARY)
    assert _recipe_of(cfg) == (["all"], 32, 64, 1e-3, 4)  # alpha follows the given rank
    cfg, _ = R.resolve(Config().override({"lora.target_modules": "qv", "lora.alpha": 8, "train.lr": 3e-3}), SHORT, BINARY)
    assert _recipe_of(cfg) == (["qv"], 16, 8, 3e-3, 2)


def test_an_architecture_without_named_target_sets_keeps_its_default_targets():
    cfg, recipe = R.resolve(Config(), SHORT, BINARY, has_presets=False)
    assert recipe is R.MANY_SHORT and cfg.lora.target_modules is None and cfg.lora.r == 16


def test_a_few_short_texts_on_the_sentiment_scale_get_ordinal_smoothing():
    def smoothing(lengths, names, cfg=Config()):
        return R.resolve(cfg, lengths, names)[0].train.ordinal_smoothing

    few = SHORT[:-1]
    assert smoothing(few, SST5) == R.ORDINAL_SMOOTHING
    assert smoothing(few, ["negative", "neutral", "positive"]) == R.ORDINAL_SMOOTHING
    assert smoothing(SHORT, SST5) == 0  # many texts: it lost on full SST-5
    assert smoothing(LONG[:-1], SST5) == 0  # long reviews: it lost on P3
    assert smoothing(few, BINARY) == 0
    assert smoothing(few, ["sports", "politics", "music"]) == 0  # no order
    assert smoothing(few, ["1", "2", "3", "4", "5"]) == 0  # numbers may be ids
    assert smoothing(few, ["positive", "negative", "neutral"]) == 0  # named out of order: neighbours are not alike
    assert smoothing(few, SST5, Config().override({"train.ordinal_smoothing": 0.0})) == 0  # the user's 0 wins


def test_a_few_long_texts_are_read_whole_up_to_512_tokens():
    def length(lengths, cfg=Config(), positions=None, labels=None):
        return R.resolve(cfg, lengths, BINARY, positions=positions, labels=labels)[0].model.max_length

    few_long = LONG[: R.FEW_LONG_TEXTS - 1]
    assert length(few_long) == R.LONG_READ == 512
    n = 2 * AUTO_BELOW
    assert length(LONG[:n], labels=[0, 1] * AUTO_BELOW) == 512
    assert length(LONG[:n], labels=[0] * (n - AUTO_BELOW + 1) + [1] * (AUTO_BELOW - 1)) == 256  # the contrastive stage runs
    assert length(few_long, positions=128) == 128  # never past what the encoder takes
    assert length(LONG[: R.FEW_LONG_TEXTS]) == R.STANDARD_READ == 256  # enough texts: 512 costs more than it gains
    assert length(SHORT[:10]) == 256  # short texts gain nothing from a longer window
    assert length(few_long, Config().override({"model.max_length": 128})) == 128  # the user's value wins


def test_a_run_saves_the_settings_the_data_chose(tiny_models, dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(R, "MANY_TEXTS", 30)  # the tiny data set (36 training texts of ~10 tokens) counts as many
    monkeypatch.setattr(R, "ENSEMBLE_MIN_TEXTS", 30)  # ... and as enough for 3 models
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv).override(
        {"train.epochs": None, "train.lr": None, "lora.r": None, "lora.target_modules": None, "model.max_length": None})
    with caplog.at_level(logging.INFO, logger="sentilora.train"):
        result = train(cfg, tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["lora"]["target_modules"], saved["lora"]["r"], saved["lora"]["alpha"]) == (["all"], 16, 32)
    assert (saved["train"]["lr"], saved["train"]["epochs"]) == (1e-3, 2) and len(result.history) == 2
    assert saved["train"]["ordinal_smoothing"] == 0  # two classes
    assert saved["train"]["ensemble"] == 3 and result.models == 3 and result.combined == "ensemble"  # many short texts
    assert saved["model"]["max_length"] == 128  # 256 for short texts, capped at the tiny encoder's 128 positions
    assert "training reads up to 128 tokens per text" in caplog.text
    assert "short training texts" in caplog.text and "LoRA r16 (alpha 32) on all, lr 0.001, 2 epochs" in caplog.text


def test_thousands_of_short_texts_train_an_ensemble_of_three():
    def ensemble(lengths, names=BINARY, given=None):
        return R.resolve(Config().override(given or {}), lengths, names)[0].train.ensemble

    thousands = [25] * R.ENSEMBLE_MIN_TEXTS
    assert ensemble(thousands) == ensemble(thousands, SST5) == R.ENSEMBLE == 3
    assert ensemble(thousands[:-1]) == ensemble(SHORT) == 1  # the short-text row, but fewer texts than measured
    assert ensemble([230] * R.ENSEMBLE_MIN_TEXTS) == 1  # long texts
    assert ensemble(thousands, given={"train.soup": 3}) == 1  # the config allows one way of combining models
    assert ensemble(thousands, given={"train.ensemble": 1}) == 1 and ensemble(LONG, given={"train.ensemble": 2}) == 2


def test_the_log_line_names_the_adapter_kind_and_the_models_trained():
    cfg, _ = R.resolve(Config().override({"lora.dora": True, "train.ensemble": 3}), SHORT, BINARY)
    line = R.describe(cfg)
    assert line.startswith("DoRA r16 (alpha 32) on all") and "3 models whose probabilities are averaged" in line
    assert R.describe(R.resolve(Config(), SHORT, BINARY)[0]).startswith("LoRA r16")


def test_a_few_labels_per_class_with_named_classes_get_texts_made_from_the_names():
    def texts(labels, names=BINARY, given=None):
        return R.resolve(Config().override(given or {}), [25] * len(labels), names, labels=labels)[0].train.class_name_texts

    few = [0, 1] * 16
    assert texts(few) == texts([i % 5 for i in range(80)], SST5) == R.CLASS_NAME_TEXTS == 2
    assert texts([0, 1] * AUTO_BELOW) == 0  # no contrastive stage: not measured there
    # decided with the texts counted, so that the stage still runs once they are added
    assert texts([0, 1] * (AUTO_BELOW - R.CLASS_NAME_TEXTS)) == 0 and texts([0, 1] * (AUTO_BELOW - R.CLASS_NAME_TEXTS - 1)) == 2
    assert texts(few, ["0", "1"]) == texts(few, ["LABEL_0", "LABEL_1"]) == texts(few, ["1 star", "5 stars"]) == 0  # ids, ratings
    assert texts(few, given={"train.contrastive_steps": 0}) == 0  # measured with the stage only
    assert texts(few, given={"train.class_name_texts": 0}) == 0 and texts([0, 1] * 500, given={"train.class_name_texts": 3}) == 3
    assert R.resolve(Config(), SHORT, BINARY)[0].train.class_name_texts == 0  # labels unknown: as if every class were large
    assert "2 texts per class made from its name" in R.describe(R.resolve(Config(), [25] * 32, BINARY, labels=few)[0])
