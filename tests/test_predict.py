from __future__ import annotations

import numpy as np
import pytest

from sentilora import Classifier
from sentilora.errors import BundleError, DataError
from sentilora.batching import length_sorted_batches
from sentilora.tokens import chunk_windows


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run("bert")


def test_token_budget_batches():
    lengths = [5, 100, 7, 100, 50, 6, 99, 8]
    batches = list(length_sorted_batches(lengths, max_batch=4, max_tokens=200))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4 and len(b) * max(lengths[i] for i in b) <= 200
    assert batches[0] == [1, 3]  # longest first, two of 100 tokens fill the budget
    assert batches[-1] == [7, 2, 5, 0]  # short texts go many to a batch


def test_results_come_back_in_input_order(run_dir):
    clf = Classifier.load(run_dir, precision="fp32")
    texts = [("good film " * n).strip() for n in (1, 30, 3, 12, 1, 7)] + ["awful plot and boring"]
    together = clf.predict_proba(texts, batch_size=3, max_tokens=64)
    one_by_one = np.concatenate([clf.predict_proba(t) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert clf.predict(texts) == [clf.predict(t) for t in texts]


def test_merged_in_memory_matches_adapter(run_dir):
    texts = ["great wonderful film", "the worst, boring plot", "fine"]
    merged = Classifier.load(run_dir, precision="fp32", merge=True).predict_proba(texts)
    adapter = Classifier.load(run_dir, precision="fp32", merge=False).predict_proba(texts)
    np.testing.assert_allclose(merged, adapter, atol=1e-5)


def test_chunk_mode_reads_past_max_length(run_dir):
    clf = Classifier.load(run_dir, precision="fp32")  # trained with max_length 32
    long = " ".join(["the movie was very good"] * 40)  # ~200 tokens
    windows = chunk_windows(list(range(100)), [101], [102], max_length=32)
    assert all(len(w) == 32 and w[0] == 101 and w[-1] == 102 for w in windows)
    covered = sorted({t for w in windows for t in w[1:-1]})
    assert covered == list(range(100))  # every token is seen by some window
    short = "good film"
    chunked = clf.predict_proba([short, long], long_texts="chunk")
    truncated = clf.predict_proba([short, long])
    np.testing.assert_allclose(chunked[0], truncated[0], atol=1e-5)  # a short text is one window
    assert chunked.shape == (2, 2) and np.allclose(chunked.sum(axis=1), 1)


@pytest.mark.parametrize("bad", ["", "   ", None, 3.5])
def test_bad_texts_are_refused_with_their_row(run_dir, bad):
    clf = Classifier.load(run_dir, precision="fp32")
    with pytest.raises(DataError, match="input row 2"):
        clf.predict_proba(["fine", bad])


def test_bf16_inference_casts_weights_once(trained_run, tmp_path):
    """On a CPU, bf16 inference uses bf16 weights (no per-call autocast); fp32 is the same model."""
    import torch

    from sentilora import Classifier

    run = trained_run("bert")
    fp32 = Classifier.load(run, precision="fp32")
    bf16 = Classifier.load(run, precision="bf16", device="cpu")
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.backend.dtype is None
    texts = ["The movie was great and wonderful.", "Awful, boring, the worst plot.", "fine"]
    np.testing.assert_allclose(bf16.predict_proba(texts), fp32.predict_proba(texts), atol=0.05)
    with pytest.raises(BundleError, match="precision='fp32'"):
        bf16.save(tmp_path / "copy")


def test_prediction_reads_up_to_the_encoders_limit(run_dir, tmp_path):
    import json
    import shutil

    from sentilora.errors import ConfigError

    clf = Classifier.load(run_dir, precision="fp32")
    man = clf.manifest  # trained on 32 tokens; the tiny encoder has 128 positions
    assert (man.max_length, man.positions, man.predict_max_length, clf.max_length) == (32, 128, 128, 128)
    long = " ".join(["the movie was very good but the ending was weak"] * 30)
    assert [len(ids) for ids in clf.encode([long, "fine"])][0] == 128
    short = Classifier.load(run_dir, precision="fp32", max_length=48)
    assert len(short.encode([long])[0]) == 48
    assert short.predict_proba([long]).shape == (1, 2)
    with pytest.raises(ConfigError, match="8 to 128"):
        Classifier.load(run_dir, precision="fp32", max_length=129)
    # A bundle written before prediction lengths existed reads what it was trained on.
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    raw = json.loads((old / "sentilora.json").read_text())
    del raw["predict_max_length"], raw["positions"]
    (old / "sentilora.json").write_text(json.dumps(raw))
    assert Classifier.load(old, precision="fp32").max_length == 32


def test_training_checks_and_stores_the_prediction_length(tiny_models, dataset, tmp_path):
    from conftest import tiny_config

    from sentilora.errors import SentiloraError
    from sentilora.train import train

    train_file, test_file = dataset()
    with pytest.raises(SentiloraError, match=r"--model.max_length 200 is more than .*\(128 tokens per text\)"):
        train(tiny_config(tiny_models["bert"], train_file, test_file, **{"model.max_length": 200}), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    cfg = tiny_config(tiny_models["bert"], train_file, test_file, **{"model.predict_max_length": 64, "train.epochs": 1})
    train(cfg, tmp_path / "b", progress=False)
    assert Classifier.load(tmp_path / "b").max_length == 64


def test_loading_a_trained_bundle_prints_no_transformers_load_report(run_dir):
    # transformers 5 reports the base model's fresh head as MISSING ("Consider training on your downstream
    # task"); for a trained bundle that is false, so the Python API must not print it. A process of its own:
    # transformers' handler writes to the stderr it found at import, which pytest's capture does not see.
    import subprocess
    import sys

    code = "import sys; from sentilora import Classifier; print(Classifier.load(sys.argv[1]).predict('a fine film'))"
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() in ("negative", "positive")
    assert "LOAD REPORT" not in out.stderr and "MISSING" not in out.stderr, out.stderr[-2000:]
    # Nor the "Loading weights" bar, nor transformers' warning of every layer a sharding plan left unsharded.
    assert "Loading weights" not in out.stderr and "not sharded" not in out.stderr, out.stderr[-2000:]
