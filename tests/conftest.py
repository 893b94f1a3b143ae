"""Shared fixtures: tiny random DistilBERT and BERT with a tokenizer written on the fly, and
a few dozen synthetic reviews. Everything is offline and takes seconds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = {
    "negative": ["bad", "awful", "terrible", "boring", "hated", "dull", "worst"],
    "positive": ["good", "great", "excellent", "wonderful", "loved", "superb", "best"],
    "neutral": ["okay", "fine", "average", "mixed", "plain", "middling", "so-so"],
}
FILLER = "the movie film plot actor scene story was and a it this very really quite with".split()


def make_rows(n: int, classes: list[str], *, seed: int) -> pd.DataFrame:
    """Synthetic reviews whose class shows in its sentiment words; lengths vary 4x."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 20))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS[label]))
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def _write_tokenizer(folder: Path) -> None:
    """A WordPiece vocabulary of the synthetic reviews' words, whole, plus single characters for any
    other text. Written out rather than trained: the trainer breaks ties differently from run to run,
    so each test session got other token ids, and a seeded test could pass in one session and fail in
    the next."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for w in FILLER} | {w for ws in WORDS.values() for w in ws for w in w.split("-")})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789") | set(".,!?'\"-:;()"))
    vocab = specials + words + [c for c in chars if c not in words] + ["##" + c for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(w + "\n" for w in vocab))
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=128).save_pretrained(str(folder))


def _tiny_model(arch: str, folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    _write_tokenizer(folder)
    vocab_size = sum(1 for _ in open(folder / "vocab.txt"))
    torch.manual_seed(0)
    if arch == "distilbert":
        cfg = DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)
        model = DistilBertModel(cfg)
    else:
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
        model = BertModel(cfg)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: _tiny_model(arch, root / arch) for arch in ("distilbert", "bert")}


@pytest.fixture(params=["distilbert", "bert"])
def tiny_model(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Path:
    return tiny_models[request.param]


@pytest.fixture
def dataset(tmp_path: Path):
    """Factory: write train/test CSVs with the given classes; returns (train_path, test_path)."""

    def make(classes: tuple[str, ...] = ("negative", "positive"), n_train: int = 48, n_test: int = 24) -> tuple[Path, Path]:
        train, test = tmp_path / "train.csv", tmp_path / "test.csv"
        make_rows(n_train, list(classes), seed=1).to_csv(train, index=False)
        make_rows(n_test, list(classes), seed=2).to_csv(test, index=False)
        return train, test

    return make


def tiny_config(model: Path, train: Path, test: Path, **overrides: object):
    """A Config that trains a tiny model in a couple of seconds."""
    from sentilora.config import Config

    cfg = Config().override({
        "model.name": str(model), "model.max_length": 32,
        "data.source": str(train), "data.test_file": str(test), "data.val_fraction": 0.25, "data.min_held_out": 0,
        "train.min_steps": 0, "train.contrastive_steps": 0,
        "train.epochs": 2, "train.batch_size": 8, "train.lr": 5e-3, "train.precision": "fp32",
        "train.device": os.environ.get("SENTILORA_TEST_DEVICE", "cpu"), "train.warmup_ratio": 0.0, "eval.batch_size": 16,
    })
    return cfg.override(dict(overrides)) if overrides else cfg


@pytest.fixture(scope="session")
def trained_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Factory: a run bundle trained for one epoch on synthetic rows, built once per (arch, classes)."""
    from sentilora.train import train

    cache: dict[tuple[str, tuple[str, ...]], Path] = {}

    def get(arch: str = "bert", classes: tuple[str, ...] = ("negative", "positive")) -> Path:
        if (arch, classes) not in cache:
            folder = tmp_path_factory.mktemp(f"run-{arch}-{len(classes)}")
            make_rows(48, list(classes), seed=1).to_csv(folder / "train.csv", index=False)
            make_rows(24, list(classes), seed=2).to_csv(folder / "test.csv", index=False)
            cfg = tiny_config(tiny_models[arch], folder / "train.csv", folder / "test.csv", **{"train.epochs": 1})
            train(cfg, folder / "run", progress=False)
            cache[arch, classes] = folder / "run"
        return cache[arch, classes]

    return get


@pytest.fixture(scope="session")
def two_runs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two binary adapter runs on the same tiny BERT base (different seeds -> different adapters)."""
    from sentilora.train import train

    folder = tmp_path_factory.mktemp("two-runs")
    make_rows(48, ["negative", "positive"], seed=1).to_csv(folder / "train.csv", index=False)
    make_rows(24, ["negative", "positive"], seed=2).to_csv(folder / "test.csv", index=False)
    runs = {}
    for name, seed in (("a", 1), ("b", 2)):
        cfg = tiny_config(tiny_models["bert"], folder / "train.csv", folder / "test.csv",
                          **{"train.epochs": 1, "train.seed": seed, "train.lr": 5e-2})
        train(cfg, folder / name, progress=False)
        runs[name] = str(folder / name)
    return runs
