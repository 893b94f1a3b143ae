from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_rows, tiny_config

from sentilora import Classifier
from sentilora.bundle import merge_bundle
from sentilora.evaluate import evaluate_run
from sentilora.train import epoch_batches, train

BUNDLE_FILES = {
    "sentilora.json",
    "config.yaml",
    "history.json",
    "train_log.jsonl",
    "adapter/README.md",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
}
TEXTS = ["The movie was great and wonderful.", "Awful, boring, the worst plot.", "It was okay, fine.", "film"]


def _files(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("classes", [("negative", "positive"), ("negative", "neutral", "positive")], ids=["binary", "3class"])
def test_train_reload_merge(tiny_model, dataset, tmp_path, classes):
    train_csv, test_csv = dataset(classes)
    run = tmp_path / "run"
    result = train(tiny_config(tiny_model, train_csv, test_csv), run, progress=False)

    assert _files(run) == BUNDLE_FILES
    manifest = json.loads((run / "sentilora.json").read_text())
    assert manifest["label_names"] == sorted(classes)
    history = json.loads((run / "history.json").read_text())
    assert len(history["epochs"]) == 2 and history["best_epoch"] == result.best_epoch

    # The reloaded bundle reproduces the best epoch's validation loss: head and adapter were saved.
    val = evaluate_run(run, split="validation", precision="fp32")["metrics"]
    assert val["loss"] == pytest.approx(result.best_metrics["loss"], abs=1e-6)

    a, b = Classifier.load(run, precision="fp32", merge=False), Classifier.load(run, precision="fp32", merge=False)
    pa = a.predict_proba(TEXTS)
    np.testing.assert_array_equal(pa, b.predict_proba(TEXTS))
    assert pa.shape == (len(TEXTS), len(classes))
    assert a.predict(TEXTS) == [sorted(classes)[i] for i in pa.argmax(axis=1)]
    assert a.predict(TEXTS[0]) == a.predict(TEXTS)[0]

    lora_b = [p for n, p in a.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), "LoRA weights never moved; merge test would be vacuous"

    merged = merge_bundle(run, tmp_path / "merged")
    c = Classifier.load(merged, precision="fp32")
    np.testing.assert_allclose(c.logits(TEXTS), a.logits(TEXTS), atol=1e-4)

    # The seed notebooks' usage snippet on the merged folder, with real label names.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert model.config.id2label == dict(enumerate(sorted(classes)))
    for text in TEXTS:
        inputs = tokenizer.encode(text, return_tensors="pt")
        label = model.config.id2label[torch.argmax(model(inputs).logits).item()]
        assert label in classes


@pytest.fixture(scope="module")
def resumable(tiny_models, tmp_path_factory):
    """An uninterrupted 3-epoch run with a checkpoint after every step, and its config: what each
    interrupted-and-resumed run below must reproduce."""
    folder = tmp_path_factory.mktemp("resumable")
    make_rows(48, ["negative", "positive"], seed=1).to_csv(folder / "train.csv", index=False)
    make_rows(24, ["negative", "positive"], seed=2).to_csv(folder / "test.csv", index=False)
    cfg = tiny_config(tiny_models["distilbert"], folder / "train.csv", folder / "test.csv",
                      **{"train.checkpoint_every": 1, "train.epochs": 3})
    return cfg, train(cfg, folder / "full", progress=False)


class Crash(Exception):
    """The process dies here."""


def _crash_at(step):
    def hook(n, loss):
        if n == step:
            raise Crash

    return hook


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def _assert_same_run(run, full):
    """`run` took the same steps as the uninterrupted `full` and ended with the same bundle."""
    from safetensors.torch import load_file

    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == list(range(1, full.steps + 1))
    np.testing.assert_allclose(_losses(run), _losses(full.run_dir), atol=1e-6, rtol=0)
    history, expected = json.loads((run / "history.json").read_text()), json.loads((full.run_dir / "history.json").read_text())
    assert history["best_epoch"] == expected["best_epoch"] and history["steps"] == expected["steps"]
    assert [e["loss"] for e in history["epochs"]] == pytest.approx([e["loss"] for e in expected["epochs"]], abs=1e-6)
    weights, reference = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (run, full.run_dir))
    assert weights.keys() == reference.keys()
    for name in weights:
        np.testing.assert_allclose(weights[name].numpy(), reference[name].numpy(), atol=1e-6, rtol=0, err_msg=name)


def test_resume_matches_uninterrupted_run(resumable, tmp_path):
    cfg, full = resumable
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", progress=False, on_step=_crash_at(7))
    assert not (tmp_path / "cut" / "sentilora.json").exists()  # an interrupted run is not a bundle
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)

    assert resumed.steps == full.steps
    np.testing.assert_allclose(_losses(tmp_path / "cut"), _losses(full.run_dir), atol=1e-6, rtol=0)
    assert len(_losses(tmp_path / "cut")) == full.steps
    np.testing.assert_allclose(
        Classifier.load(tmp_path / "cut", precision="fp32").predict_proba(TEXTS),
        Classifier.load(full.run_dir, precision="fp32").predict_proba(TEXTS), atol=1e-6
    )
    _assert_same_run(tmp_path / "cut", full)


# 5 steps an epoch, a checkpoint after each: step 7 is one in mid-epoch, step 10 the one that ends
# epoch 2 and carries that epoch's best weights.
@pytest.mark.parametrize("step", [7, 10], ids=["mid-epoch", "end-of-epoch"])
def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one(resumable, tmp_path, monkeypatch, step):
    """A checkpoint is several pieces (trainable weights, optimiser and RNG state, best weights). The
    process dies after the first is written and before the rest: the resumed run must start from one
    whole checkpoint and take exactly the uninterrupted run's steps, not pair new weights with an old
    optimiser and step count."""
    cfg, full = resumable
    real_save, calls = torch.save, []

    def save_then_die(*args, **kwargs):  # torch.save writes the optimiser/RNG/step piece
        calls.append(1)
        if len(calls) == step:  # the checkpoint after step `step`, its weights already on disk
            raise Crash
        return real_save(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save_then_die)
        with pytest.raises(Crash):
            train(cfg, tmp_path / "cut", progress=False)
    assert len(calls) == step  # it died in that checkpoint, not in some other write
    assert not (tmp_path / "cut" / "sentilora.json").exists()
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    _assert_same_run(tmp_path / "cut", full)


def test_resume_after_a_kill_mid_log_line(resumable, tmp_path):
    """A kill can cut the last line of train_log.jsonl short; resume drops it with the lines after
    the checkpoint, and the log ends up as the uninterrupted run's."""
    cfg, full = resumable
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", progress=False, on_step=_crash_at(7))
    with open(tmp_path / "cut" / "train_log.jsonl", "a") as f:
        f.write('{"step": 8, "epoch": 2, "lo')  # the next line, half written
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert (tmp_path / "cut" / "train_log.jsonl").read_text().count("\n") == full.steps
    _assert_same_run(tmp_path / "cut", full)


def test_epoch_batches_cover_every_row_once():
    lengths = list(np.random.default_rng(0).integers(5, 500, size=203))
    for group in (True, False):
        batches = epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=group)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(203))
        assert batches == epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=group)
        assert batches != epoch_batches(lengths, 16, seed=3, epoch=2, group_by_length=group)
    grouped = epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=True)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in grouped])
    assert spread < 0.2 * np.ptp(lengths)  # length-grouped batches hold similar lengths


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_keeps_best_epoch(tiny_models, dataset, tmp_path, patience):
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{
        "train.epochs": 6, "train.early_stopping_patience": patience, "train.select_metric": "loss"})
    result = train(cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in result.history]
    assert result.best_metrics["loss"] == min(losses)
    assert len(result.history) == 6 or losses[-1] >= min(losses)  # stopped only after a non-improving epoch

    # Patience arithmetic: the run ends after the first epoch that makes `patience` epochs in a row
    # without a new best (lower validation loss). On this data that happens well before epoch 6.
    best, bad, stop = float("inf"), 0, None
    for epoch, loss in enumerate(losses, 1):
        best, bad = (loss, 0) if loss < best else (best, bad + 1)
        if bad == patience:
            stop = epoch
            break
    assert stop is not None and stop < 6, f"early stopping never fired: validation losses {losses}"
    assert len(result.history) == stop and result.steps == stop * 5  # 5 steps an epoch; nothing ran after it
    best_epoch = losses.index(min(losses)) + 1
    assert result.best_epoch == best_epoch == json.loads((tmp_path / "run" / "history.json").read_text())["best_epoch"]
    assert best_epoch < stop

    # The bundle holds the best epoch's weights, not the last epoch's: reloaded, it scores the
    # validation split exactly as the best epoch did (and the last epoch scored differently).
    assert abs(losses[-1] - losses[best_epoch - 1]) > 1e-5
    val = evaluate_run(tmp_path / "run", split="validation", precision="fp32")["metrics"]
    assert val["loss"] == pytest.approx(losses[best_epoch - 1], abs=1e-6)


def test_refuses_to_overwrite_a_run(tiny_models, dataset, tmp_path):
    train_csv, test_csv = dataset()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    from sentilora.errors import SentiloraError

    with pytest.raises(SentiloraError, match="folder exists and is not empty"):
        train(tiny_config(tiny_models["bert"], train_csv, test_csv), tmp_path / "run", progress=False)
    with pytest.raises(SentiloraError, match="nothing to resume"):
        train(tiny_config(tiny_models["bert"], train_csv, test_csv), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_bundle_checks_its_base_model(tiny_models, dataset, tmp_path):
    import shutil

    from sentilora.errors import BundleError

    train_csv, test_csv = dataset()
    base = tmp_path / "base"
    shutil.copytree(tiny_models["bert"], base)
    run = tmp_path / "run"
    train(tiny_config(base, train_csv, test_csv, **{"train.epochs": 1}), run, progress=False)
    clf = Classifier.load(run, precision="fp32", merge=False)
    clf.save(tmp_path / "copy")  # save() writes a bundle that loads to the same predictions
    np.testing.assert_array_equal(Classifier.load(tmp_path / "copy", precision="fp32", merge=False).predict_proba(TEXTS),
                                  clf.predict_proba(TEXTS))

    # Another checkpoint under the same path: refused, not silently mispredicting.
    from transformers import BertModel

    other = BertModel.from_pretrained(base)
    torch.nn.init.normal_(other.embeddings.word_embeddings.weight)
    other.save_pretrained(base)
    with pytest.raises(BundleError, match="does not match the one this adapter was trained on"):
        Classifier.load(run)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(BundleError, match="adapter_model.safetensors is missing"):
        Classifier.load(run)


def test_time_budget_and_snapshots(tiny_models, dataset, tmp_path):
    from sentilora.evaluate import evaluate_run

    train_csv, test_csv = dataset()
    run = tmp_path / "run"
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.max_minutes": 1e-6, "train.epochs": 3})
    result = train(cfg, run, progress=False, snapshot_minutes=(0,))
    # the budget is spent after the first step: that step's model is validated and kept, nothing more runs
    assert result.steps == 1 and len(result.history) == 1
    snap = run / "snapshots" / "0min"
    assert json.loads((snap / "history.json").read_text())["step"] == 1
    # the snapshot is a loadable bundle holding the model after step 1, i.e. the kept one
    a = evaluate_run(snap, data=str(train_csv), split="train", precision="fp32", output=tmp_path / "a.json")["metrics"]
    b = evaluate_run(run, data=str(train_csv), split="train", precision="fp32", output=tmp_path / "b.json")["metrics"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


class _ConstantModel(torch.nn.Module):
    """Stands in for a trained classifier whose outputs no longer depend on the input."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.config = SimpleNamespace(num_labels=2)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=torch.full((input_ids.shape[0], 2), self.value))


def test_validation_flags_a_collapsed_model_and_stops_on_nan():
    from sentilora.config import Config
    from sentilora.errors import SentiloraError
    from sentilora.train import _validate

    ids, labels, cpu = [[1, 5, 2], [1, 6, 7, 2], [1, 8, 2]], [0, 1, 0], torch.device("cpu")
    collapsed = _validate(_ConstantModel(0.3), ids, labels, 0, cpu, None, Config())
    assert collapsed["collapsed"] and abs(collapsed["loss"] - np.log(2)) < 1e-6
    with pytest.raises(SentiloraError, match="training diverged.*Lower --train.lr"):
        _validate(_ConstantModel(float("nan")), ids, labels, 0, cpu, None, Config())


def test_best_epoch_tie_goes_to_lower_loss():
    from sentilora.train import _better

    first = {"accuracy": 0.81, "f1": 0.82, "loss": 0.48}
    assert _better({"accuracy": 0.81, "f1": 0.82, "loss": 0.41}, first, "accuracy")  # same accuracy, lower loss
    assert not _better({"accuracy": 0.81, "f1": 0.82, "loss": 0.50}, first, "accuracy")
    assert not _better({"accuracy": 0.80, "f1": 0.90, "loss": 0.10}, first, "accuracy")
    assert _better({"accuracy": 0.70, "f1": 0.70, "loss": 0.40}, first, "loss")


def test_linear_schedule_and_its_replan():
    from sentilora.train import LinearSchedule

    plain = LinearSchedule(6, 100, 0.06)
    # without a replan: (s + 1) / warmup, then linear decay to 0 at the planned end (the old formula)
    assert [plain(s) for s in range(100)] == [(s + 1) / 6 if s < 6 else (100 - s) / 94 for s in range(100)]
    cut = LinearSchedule(6, 100, 0.06)
    before = cut(40)
    cut.replan(40, 60)
    after = [cut(s) for s in range(40, 61)]
    assert after[0] == pytest.approx(before)  # no jump where the plan changes
    assert after[-1] == 0.0 and all(a > b for a, b in zip(after, after[1:]))  # reaches 0 at the steps that fit
    early = LinearSchedule(60, 1000, 0.06)
    early.replan(10, 200)  # still warming up: a warm-up of 6% of the shorter run
    assert early.warmup == 12 and early(11) == 1.0 and early(200) == 0.0


def test_time_budget_fits_the_schedule_and_resumes_with_it(tiny_models, dataset, tmp_path, monkeypatch):
    """With --train.max_minutes the LR decays to 0 by the time the budget ends, not after the planned epochs."""
    from sentilora import train as T

    train_csv, test_csv = dataset()
    # A clock of one second per step: under 60 steps fit in a minute, far fewer than 40 epochs x 5 steps.
    monkeypatch.setattr(T.Trainer, "elapsed", lambda self: float(self.state.step))
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv,
                      **{"train.max_minutes": 1.0, "train.epochs": 40, "train.warmup_ratio": 0.1, "train.checkpoint_every": 1,
                         "train.early_stopping_patience": 0})
    full = train(cfg, tmp_path / "full", progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert 50 <= full.steps < 60 and lrs[-1] == 0.0  # validation time is reserved; the LR has decayed to 0
    peak = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", progress=False, on_step=_crash_at(full.steps - 2))
    train(cfg, tmp_path / "cut", resume=True, progress=False)  # the fitted plan travels in the checkpoint
    resumed = [json.loads(line)["lr"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert resumed == pytest.approx(lrs, abs=1e-12)


def test_replans_follow_the_step_rate_up_and_down_to_the_first_plan():
    from sentilora.train import LinearSchedule

    plan = LinearSchedule(6, 1000, 0.006)
    plan.replan(25, 300)  # 20 fast steps said 300 fit
    at = plan(300 - 1)
    plan.replan(45, 150)  # slower than it looked: the decay now ends sooner, without a jump
    assert plan.total == 150 and plan(150) == 0.0
    plan.replan(65, 5000)  # faster again: longer, but never past the first plan
    assert plan.total == 1000 and plan(1000) == 0.0 and at > 0
    values = [plan(s) for s in range(65, 1001)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_ordinal_smoothing_trains_on_soft_targets(tiny_models, dataset, tmp_path, caplog):
    from sentilora.train_step import ordinal_targets

    assert ordinal_targets(5, 0.4)[2].tolist() == pytest.approx([0, 0.2, 0.6, 0.2, 0])
    assert ordinal_targets(5, 0.4)[0].tolist() == pytest.approx([0.6, 0.4, 0, 0, 0])  # an end class has one neighbour
    assert ordinal_targets(2, 0.4) is None and ordinal_targets(5, 0.0) is None
    train_csv, test_csv = dataset(("negative", "neutral", "positive"))
    first_loss = {}
    for smoothing in (0.0, 0.3):
        run = tmp_path / f"s{smoothing}"
        cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.ordinal_smoothing": smoothing, "train.epochs": 1})
        train(cfg, run, progress=False)
        first_loss[smoothing] = json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["loss"]
    # Same seed, weights and first batch: only the targets differ.
    assert first_loss[0.3] != pytest.approx(first_loss[0.0], rel=1e-4)
    binary_csv, binary_test = dataset()
    with caplog.at_level(logging.WARNING):
        train(tiny_config(tiny_models["bert"], binary_csv, binary_test, **{"train.ordinal_smoothing": 0.3, "train.epochs": 1}),
              tmp_path / "binary", progress=False)
    assert "needs 3 or more ordered classes" in caplog.text


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dora_trains_reloads_and_merges(tiny_models, dataset, tmp_path, precision):
    train_csv, test_csv = dataset()
    run = tmp_path / "run"
    result = train(tiny_config(tiny_models["bert"], train_csv, test_csv, **{"lora.dora": True, "train.precision": precision}),
                   run, progress=False)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    val = evaluate_run(run, split="validation", precision="fp32")["metrics"]
    if precision == "fp32":  # the reloaded bundle is the trained one, magnitudes included
        assert val["loss"] == pytest.approx(result.best_metrics["loss"], abs=1e-6)
    unmerged = Classifier.load(run, precision="fp32", merge=False)
    assert any("lora_magnitude_vector" in n for n, _ in unmerged.model.named_parameters())
    lora_b = [p for n, p in unmerged.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), "LoRA weights never moved; the merge check would be vacuous"
    merged = Classifier.load(merge_bundle(run, tmp_path / "merged"), precision="fp32")
    np.testing.assert_allclose(merged.logits(TEXTS), unmerged.logits(TEXTS), atol=1e-4)



def test_resume_of_a_finished_run_says_it_finished(trained_run, tmp_path):
    import shutil

    from sentilora.config import Config
    from sentilora.errors import SentiloraError

    run = tmp_path / "run"
    shutil.copytree(trained_run("bert"), run)
    with pytest.raises(SentiloraError, match=r"the run already finished \(its bundle sentilora.json is there\); "
                                             "nothing to resume") as e:
        train(Config(), run, resume=True, progress=False)
    assert "no complete checkpoint" not in str(e.value)


def test_train_imported_from_the_package_trains_as_the_readme_says():
    """`from sentilora import train` gets the submodule (the import system binds it to the name); it calls as train()."""
    import subprocess
    import sys

    code = ("from sentilora import train\nimport sentilora, sys\n"
            "sys.modules['sentilora.train'].train = lambda *a, **k: ('called', a, k)\n"
            "print(train('cfg', 'runs/x', progress=False), sentilora.train is train)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "('called', ('cfg', 'runs/x'), {'progress': False}) True"
