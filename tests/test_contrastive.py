"""The SetFit-style contrastive stage (--train.contrastive_steps)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_rows, tiny_config

from sentilora import model as M
from sentilora.contrastive import AUTO_MIN_STEPS, auto_steps, contrastive_stage, draw_pairs, ordinal_target
from sentilora.heads import head_inputs
from sentilora.errors import ConfigError
from sentilora.evaluate import evaluate_run
from sentilora.recipe import CLASS_NAME_TEXTS
from sentilora.tokens import encode
from sentilora.train import train


def test_pairs_are_half_one_class_half_two():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pairs = draw_pairs(labels, 200, np.random.default_rng(0))
    assert len(pairs) == 200
    same = [(i, j) for i, j, t in pairs if t == 1.0]
    other = [(i, j) for i, j, t in pairs if t == 0.0]
    assert len(same) == len(other) == 100
    assert all(labels[i] == labels[j] and i != j for i, j in same)
    assert all(labels[i] != labels[j] for i, j in other)
    assert {labels[i] for i, _, _ in pairs} == {0, 1, 2}  # every class gets drawn


def test_ordered_classes_pull_neighbours_closer_than_the_ends():
    """--train.contrastive_ordinal: on a 5-point scale, neighbours get the target given, the two ends 0."""
    assert [ordinal_target(d, 5, 0.6) for d in (1, 2, 3, 4)] == pytest.approx([0.6, 0.4, 0.2, 0.0])
    assert ordinal_target(1, 2, 0.6) == 0.0 and ordinal_target(2, 5, 0.0) == 0.0  # two classes; off
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    pairs = draw_pairs(labels, 400, np.random.default_rng(0), neighbour=0.6)
    other = [(abs(labels[i] - labels[j]), t) for i, j, t in pairs if labels[i] != labels[j]]
    assert len(other) == 200 and {d: t for d, t in other} == pytest.approx({1: 0.6, 2: 0.4, 3: 0.2, 4: 0.0})
    assert all(t == 1.0 for i, j, t in pairs if labels[i] == labels[j])


def _embeddings(model, ids, pad_id):
    from sentilora.batching import collate

    model.eval()
    with torch.no_grad(), head_inputs(model) as seen:
        model(**collate(ids, pad_id))
    return torch.nn.functional.normalize(seen[0].float(), dim=-1)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_the_stage_pulls_a_class_together_and_pushes_classes_apart(tiny_models, arch):
    torch.manual_seed(0)
    rows = make_rows(40, ["negative", "positive"], seed=3)
    labels = [int(x == "positive") for x in rows["label"]]
    tok = M.load_tokenizer(str(tiny_models[arch]))
    ids = encode(tok, rows["text"].tolist(), max_length=32, truncation="head_tail")
    base, new = M.load_base_model(str(tiny_models[arch]), ["negative", "positive"], pooling="mean")
    M.set_dropout(base, 0.0)  # as training does by default (--model.dropout 0)
    model = M.add_lora(base, r=4, alpha=8, dropout=0.0, targets=M.target_modules(base, None), heads=M.head_modules(base, new))
    y = torch.tensor(labels)

    def margin():  # mean cosine within classes minus mean cosine across them
        e = _embeddings(model, ids, tok.pad_token_id)
        sim = e @ e.T
        same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
        return (sim[same].mean() - sim[y[:, None] != y[None, :]].mean()).item()

    before = margin()
    contrastive_stage(model, ids, labels, steps=120, pairs_per_step=8, lr=3e-2, pad_id=tok.pad_token_id,
                      device=torch.device("cpu"), dtype=None, seed=0)
    after = margin()
    assert after > before + 0.2, (before, after)


def test_ordered_classes_end_with_neighbours_closer_than_the_ends(tiny_models):
    """--train.contrastive_ordinal: after the stage, "negative" texts sit nearer "neutral" ones than
    "positive" ones do; with SetFit's targets (0) both pairs of classes are pushed apart alike."""
    names = ["negative", "neutral", "positive"]
    rows = make_rows(45, names, seed=3)
    labels = [names.index(x) for x in rows["label"]]
    tok = M.load_tokenizer(str(tiny_models["bert"]))
    ids = encode(tok, rows["text"].tolist(), max_length=32, truncation="head_tail")
    y = torch.tensor(labels)

    def gap(neighbour):  # mean cosine of neighbouring classes minus that of the two ends
        torch.manual_seed(0)
        base, new = M.load_base_model(str(tiny_models["bert"]), names, pooling="mean")
        M.set_dropout(base, 0.0)
        model = M.add_lora(base, r=4, alpha=8, dropout=0.0, targets=M.target_modules(base, None), heads=M.head_modules(base, new))
        contrastive_stage(model, ids, labels, steps=300, pairs_per_step=8, lr=3e-2, pad_id=tok.pad_token_id,
                          device=torch.device("cpu"), dtype=None, seed=0, neighbour=neighbour)
        e = _embeddings(model, ids, tok.pad_token_id)
        sim, d = e @ e.T, (y[:, None] - y[None, :]).abs()
        return (sim[d == 1].mean() - sim[d == 2].mean()).item()

    plain, ordered = gap(0.0), gap(0.6)
    assert ordered > plain + 0.3 and ordered > 0.3, (plain, ordered)  # here: 0.03 and 0.66


def test_a_text_drawn_twice_in_a_step_goes_through_the_model_once(tiny_models):
    """16 pairs drawn from 12 texts hold at most 12 distinct texts, not 32: the stage forwards those
    only, and the pairs' loss is still that of each pair's own two texts."""
    rows = make_rows(12, ["negative", "positive"], seed=3)
    labels = [int(x == "positive") for x in rows["label"]]
    tok = M.load_tokenizer(str(tiny_models["bert"]))
    ids = encode(tok, rows["text"].tolist(), max_length=32, truncation="head_tail")
    base, new = M.load_base_model(str(tiny_models["bert"]), ["negative", "positive"], pooling="mean")
    M.set_dropout(base, 0.0)
    model = M.add_lora(base, r=4, alpha=8, dropout=0.0, targets=M.target_modules(base, None), heads=M.head_modules(base, new))
    pairs = draw_pairs(labels, 16, np.random.default_rng(0))  # the stage's first step, same seed
    emb = _embeddings(model, ids, tok.pad_token_id)
    cos = (emb[[i for i, _, _ in pairs]] * emb[[j for _, j, _ in pairs]]).sum(-1)
    expected = torch.nn.functional.mse_loss(cos, torch.tensor([t for _, _, t in pairs])).item()
    rows_seen = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: rows_seen.append(len(kwargs["input_ids"])),
                                           with_kwargs=True)
    loss = contrastive_stage(model, ids, labels, steps=1, pairs_per_step=16, lr=1e-3, pad_id=tok.pad_token_id,
                             device=torch.device("cpu"), dtype=None, seed=0)
    hook.remove()
    distinct = {i for pair in pairs for i in pair[:2]}
    assert rows_seen == [len(distinct)] and len(distinct) <= 12
    assert loss == pytest.approx(expected, abs=1e-5)


def test_one_class_is_refused(tiny_models):
    base, _ = M.load_base_model(str(tiny_models["bert"]), ["a", "b"], pooling="mean")
    with pytest.raises(ConfigError, match="two classes"):
        contrastive_stage(base, [[1, 2]] * 4, [0] * 4, steps=1, pairs_per_step=2, lr=1e-3, pad_id=0,
                          device=torch.device("cpu"), dtype=None, seed=0)


def test_a_run_with_the_stage_trains_logs_it_and_reloads(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.contrastive_steps": 12, "model.pooling": "mean",
                                                                  "train.min_steps": 200, "train.epochs": 2})
    with caplog.at_level(logging.INFO):
        result = train(cfg, tmp_path / "run", progress=False)
    assert "contrastive stage: 12 steps of 8 pairs" in caplog.text
    assert "head started as a logistic regression" in caplog.text
    # The stage's steps are not optimiser steps of the main schedule, and the step floor is not applied
    # after it: 2 epochs of 36 texts in batches of 8.
    assert result.steps == len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 10
    assert evaluate_run(tmp_path / "run", baseline=False)["metrics"]["n"] == 24  # the bundle loads and scores


def test_class_name_texts_join_the_training_texts_only(tiny_models, dataset, tmp_path, caplog):
    from sentilora.data import Split, with_class_name_texts

    split = Split(["a fine film"], [1], "x.csv")
    assert with_class_name_texts(split, ["neg", "pos"], 0) is split
    more = with_class_name_texts(split, ["neg", "pos"], 2)
    assert more.texts[1:] == ["This sentence is neg"] * 2 + ["This sentence is pos"] * 2 and more.labels == [1, 0, 0, 1, 1]
    train_csv, test_csv = dataset()
    runs = {}
    for n in (0, 2):
        cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.class_name_texts": n, "train.epochs": 1,
                                                                      "train.min_steps": 0, "train.contrastive_steps": 0})
        with caplog.at_level(logging.INFO):
            train(cfg, tmp_path / f"run{n}", progress=False)
        runs[n] = json.loads((tmp_path / f"run{n}" / "history.json").read_text())
    assert runs[2]["train_samples"] == runs[0]["train_samples"] + 2 * 2  # 2 per class, 2 classes, 1 epoch
    assert "2 training texts per class made from the class names" in caplog.text
    assert evaluate_run(tmp_path / "run2", baseline=False)["metrics"]["n"] == 24  # the test split is untouched


@pytest.mark.parametrize("ids, added", [(False, 2), (True, 0)])
def test_left_unset_class_name_texts_join_a_small_run_whose_classes_have_names(tiny_models, dataset, tmp_path, ids, added):
    train_csv, test_csv = dataset()  # 18 training texts per class: the contrastive stage runs
    if ids:  # classes 0 and 1: no name to make a text from
        for path in (train_csv, test_csv):
            rows = pd.read_csv(path)
            rows.assign(label=(rows["label"] == "positive").astype(int)).to_csv(path, index=False)
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.contrastive_steps": None, "train.epochs": 1})
    assert cfg.train.class_name_texts is None
    train(cfg, tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["train"]["class_name_texts"] == added  # a resumed or retrained run reads the same number
    assert history["train_samples"] == 36 + added * 2  # 48 rows, a quarter held out, 1 epoch


def test_contrastive_ordinal_without_a_scale_is_ignored_with_a_warning(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset()  # two classes
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.contrastive_steps": 2, "train.contrastive_ordinal": 0.4,
                                                                  "train.epochs": 1})
    with caplog.at_level(logging.INFO):
        train(cfg, tmp_path / "run", progress=False)
    assert "--train.contrastive_ordinal acts in a contrastive stage on 3 or more ordered classes; with 2 classes" in caplog.text


def test_head_init_prototypes_keeps_class_means_after_the_stage(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.contrastive_steps": 4, "model.pooling": "mean",
                                                                  "model.head_init": "prototypes", "train.epochs": 1})
    with caplog.at_level(logging.INFO):
        train(cfg, tmp_path / "run", progress=False)
    assert "head started from the class means" in caplog.text and "logistic" not in caplog.text


def test_unset_runs_the_stage_only_for_few_labels():
    assert auto_steps([0, 1] * 16, 16) == AUTO_MIN_STEPS  # 20 pairs per text would be 40 steps
    assert auto_steps([0, 1, 2, 3, 4] * 16, 16) == 100  # SST-5 at 16 per class
    assert auto_steps([0, 1] * 64, 16) == 0  # 64 per class: enough labels
    assert auto_steps([0] * 40 + [1], 16) == 51  # the smallest class decides


def test_unset_steps_follow_the_data_and_zero_turns_the_stage_off(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset()  # 48 short synthetic texts: 18 per class after the hold-out
    cfg = tiny_config(tiny_models["distilbert"], train_csv, test_csv, **{"train.contrastive_steps": None, "train.epochs": 1})
    with caplog.at_level(logging.INFO):
        train(cfg, tmp_path / "auto", progress=False)
    # 20 pairs for each of 40 texts (36, and 2 per class made from the class names), 8 pairs a step
    steps = auto_steps([0, 1] * (18 + CLASS_NAME_TEXTS), 8)
    assert steps == 100
    assert f"a contrastive stage of {steps} steps first" in caplog.text
    assert f"contrastive stage: {steps} steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(cfg.override({"train.contrastive_steps": 0}), tmp_path / "off", progress=False)
    assert "contrastive stage" not in caplog.text
