"""The reference: the seed notebook recipe, plain Hugging Face Trainer + PEFT (nothing from sentilora).

    python bench/reference_seed.py                      # P1, 10 epochs -> bench/results/reference_seed-p1.json
    python bench/reference_seed.py --max-steps 5 --epochs 1   # smoke -> bench/work/reference_seed-p1-smoke.json

Recipe (kept verbatim from the notebook users run today): MiniLM-L6 encoder,
AutoModelForSequenceClassification, tokenizer truncating on the left at 512 tokens with dynamic
padding, LoRA r=4 / alpha=32 / dropout=0.01 on the attention query projection, AdamW lr 1e-3,
batch 4, 10 epochs, weight decay 0.01, evaluation + checkpoint every epoch, best model (lowest eval
loss) reloaded at the end, seed 42. The one addition: `set_seed(42)` before the model is built,
so the randomly initialised classifier head is reproducible too (Trainer only seeds in __init__).

`run_reference()` is the importable core, so other scripts can time N reference steps side by side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, WORK_DIR, PeakRSS, load_protocol, model_path, utc_now, write_results  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

BENCH = "reference_seed"
SYSTEM = "reference (HF Trainer + PEFT seed recipe)"

# Everything that defines the recipe; its hash decides whether a cached result still applies.
RECIPE: dict[str, Any] = {
    "max_length": 512,
    # The notebook ran on transformers 4, which loads every checkpoint in fp32; transformers 5 keeps a
    # checkpoint's own dtype (a fp16 copy would train in fp16), so the fp32 load is spelled out.
    "dtype": "float32",
    "truncation_side": "left",
    "padding": "dynamic (DataCollatorWithPadding)",
    "lora": {"task_type": "SEQ_CLS", "r": 4, "lora_alpha": 32, "lora_dropout": 0.01,
             "target_modules": {"bert-family": ["query"], "distilbert": ["q_lin"]}},
    "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
                 "weight_decay": 0.01, "eval_strategy": "epoch", "save_strategy": "epoch",
                 "load_best_model_at_end": True, "metric_for_best_model": "loss (default)", "seed": 42},
    "metrics": "sklearn accuracy + precision/recall/F1 (binary; macro for >2 classes)",
    "data": "common.<protocol>() sampler",
}


def recipe_hash(epochs: int) -> str:
    blob = json.dumps({**RECIPE, "epochs": epochs}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 3)


def run_reference(
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame,
    *,
    model: str = "minilm",
    epochs: int = 10,
    max_steps: int | None = None,
    out_dir: str | Path,
    label_names: list[str] | None = None,
    threads: int | None = None,
    evaluate: bool = True,
    progress_every: int = 25,
    resume: bool = False,
    seed: int = 42,
) -> dict[str, Any]:
    """Train the seed recipe on train_df, evaluate every epoch on eval_df, return the figures.

    `max_steps` stops after that many optimizer steps (smoke / side-by-side timing).
    `evaluate=False` turns off per-epoch evaluation and checkpointing (pure training timing);
    the returned dict then has no accuracy figures. `out_dir` is wiped and reused, unless `resume`
    is set and it holds a checkpoint: then training continues from the latest epoch checkpoint
    (the Trainer's own resume), and the per-epoch times of earlier sessions come from
    `out_dir/epoch_times.json`.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    t_start = time.perf_counter()
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    times_file = out_dir / "epoch_times.json"
    resume_from = resume and evaluate and any(out_dir.glob("checkpoint-*"))
    if not resume_from:
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier_epoch_s: list[float] = json.loads(times_file.read_text()) if resume_from and times_file.exists() else []

    label_names = list(label_names or train_df.attrs.get("label_names") or ["Negative", "Positive"])
    num_labels = len(label_names)
    id2label = dict(enumerate(label_names))
    label2id = {v: k for k, v in id2label.items()}
    path = model_path(model)

    # --- the notebook recipe -------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(path, truncation_side="left")

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=RECIPE["max_length"])

    def to_ds(df: pd.DataFrame) -> Dataset:
        ds = Dataset.from_pandas(df[["text", "label"]].reset_index(drop=True))
        return ds.map(tokenize, batched=True, remove_columns=["text"])

    train_ds, eval_ds = to_ds(train_df), to_ds(eval_df)

    set_seed(seed)
    model_type = AutoConfig.from_pretrained(path).model_type
    net = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, id2label=id2label, label2id=label2id, dtype=torch.float32
    )
    lora = RECIPE["lora"]
    peft_config = LoraConfig(
        task_type=lora["task_type"], r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
        target_modules=lora["target_modules"]["distilbert" if model_type == "distilbert" else "bert-family"],
    )
    net = get_peft_model(net, peft_config)
    trainable_params, total_params = net.get_nb_trainable_parameters()

    def compute_metrics(p: Any) -> dict[str, float]:
        preds = np.argmax(p.predictions, axis=1)
        average = "binary" if num_labels == 2 else "macro"
        precision, recall, f1, _ = precision_recall_fscore_support(
            p.label_ids, preds, average=average, zero_division=0
        )
        return {"accuracy": accuracy_score(p.label_ids, preds), "precision": precision, "recall": recall, "f1": f1}

    tr = RECIPE["training"]
    args = TrainingArguments(
        output_dir=str(out_dir),
        learning_rate=tr["learning_rate"],
        per_device_train_batch_size=tr["per_device_train_batch_size"],
        per_device_eval_batch_size=tr["per_device_eval_batch_size"],
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps else -1,
        weight_decay=tr["weight_decay"],
        eval_strategy=tr["eval_strategy"] if evaluate else "no",
        save_strategy=tr["save_strategy"] if evaluate else "no",
        load_best_model_at_end=tr["load_best_model_at_end"] and evaluate,
        report_to="none",
        seed=seed,  # the recipe's 42 unless a seed sweep asks for others
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not sys.stderr.isatty(),  # a log file gets the line-per-N-steps progress instead
    )

    # --- measurement (does not change the recipe) --------------------------------------------
    class Timer(TrainerCallback):
        """Training-only time: on_epoch_begin..on_epoch_end; the epoch's evaluation runs after it."""

        def __init__(self) -> None:
            self.epoch_s: list[float] = list(earlier_epoch_s)
            self._t0 = 0.0
            self._run_t0 = time.perf_counter()
            self.steps_timed = 0

        def on_epoch_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kw):
            self.epoch_s.append(time.perf_counter() - self._t0)

        def on_save(self, args, state, control, **kw):
            # Written once the epoch's checkpoint exists, so a resumed run never counts an epoch twice.
            times_file.write_text(json.dumps(self.epoch_s))

        def on_step_end(self, args, state, control, **kw):
            n = state.global_step
            if progress_every and (n % progress_every == 0 or n == state.max_steps):
                done = sum(self.epoch_s) + time.perf_counter() - self._t0
                rate = done / n
                eta = rate * (state.max_steps - n)
                print(f"[reference] step {n}/{state.max_steps} epoch {state.epoch:.2f} "
                      f"train {done:.0f}s ({rate:.2f} s/step) train-ETA {eta / 60:.1f} min "
                      f"elapsed {(time.perf_counter() - self._run_t0) / 60:.1f} min", flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if metrics:
                print(f"[reference] eval epoch {state.epoch:.2f}: " + ", ".join(
                    f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)), flush=True)

    timer = Timer()
    trainer = Trainer(
        model=net,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if evaluate else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer=tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[timer],
    )
    trainer.train(resume_from_checkpoint=True if resume_from else None)

    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    bundle_mb = _dir_mb(adapter_dir)
    wall_s = time.perf_counter() - t_start

    state = trainer.state
    steps_per_epoch = -(-len(train_ds) // tr["per_device_train_batch_size"])
    full, rem = divmod(state.global_step, steps_per_epoch)
    samples = full * len(train_ds) + min(rem * tr["per_device_train_batch_size"], len(train_ds))
    train_s = sum(timer.epoch_s)

    epochs_log = []
    for e in (h for h in state.log_history if "eval_loss" in h):
        epochs_log.append({
            "epoch": round(e["epoch"], 3), "step": e["step"], "eval_loss": e["eval_loss"],
            "accuracy": e.get("eval_accuracy"), "precision": e.get("eval_precision"),
            "recall": e.get("eval_recall"), "f1": e.get("eval_f1"), "eval_s": e.get("eval_runtime"),
        })
    for row, s in zip(epochs_log, timer.epoch_s):
        row["train_s"] = round(s, 1)

    result: dict[str, Any] = {
        "model": model,
        "model_type": model_type,
        "epochs_requested": epochs,
        "max_steps": max_steps,
        "steps": state.global_step,
        "train_samples": len(train_ds),
        "eval_samples": len(eval_ds),
        "wall_s": round(wall_s, 1),
        "train_s": round(train_s, 1),
        "samples_per_s": round(samples / train_s, 3) if train_s else None,
        "samples_trained": samples,
        "peak_rss_mb": PeakRSS.now(),
        "trainable_params": trainable_params,
        "total_params": total_params,
        "bundle_mb": bundle_mb,
        "threads": threads,
        "epochs": epochs_log,
    }
    if epochs_log:
        best = max(epochs_log, key=lambda r: r["accuracy"])
        kept_step = None
        if state.best_model_checkpoint:
            kept_step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
        kept = next((r for r in epochs_log if r["step"] == kept_step), epochs_log[-1])
        result.update({
            "accuracy": best["accuracy"],
            "f1": best["f1"],
            "best_epoch_by_accuracy": best["epoch"],
            "accuracy_trainer_kept": kept["accuracy"],
            "f1_trainer_kept": kept["f1"],
            "epoch_trainer_kept": kept["epoch"],
            "trainer_kept_rule": "lowest eval loss (Trainer default)" if kept_step else "last epoch",
        })
    return result


def _cached(path: Path, model: str, protocol: str, rhash: str) -> bool:
    try:
        data = json.loads(path.read_text())
        row = data["rows"][0]
        return data.get("protocol") == protocol and row.get("model") == model and row.get("recipe_hash") == rhash
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default="p1", choices=["p1", "p2", "p3"],
                    help="data protocol from bench/common.py (p2/p3 are 25k reviews: many hours on CPU)")
    ap.add_argument("--model", default="minilm", help='checkpoint path or "minilm" (the bundled MiniLM-L6)')
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (recipe: 10)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after N optimizer steps: a smoke run, written to bench/work/, never bench/results/")
    ap.add_argument("--eval-limit", type=int, default=None,
                    help="evaluate on the first N eval reviews only (smoke runs; also writes to bench/work/)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--force", action="store_true", help="re-run even if a matching result is cached")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its latest epoch checkpoint in bench/work/ "
                         "(a 2-hour run can span sessions)")
    a = ap.parse_args(argv)

    smoke = a.max_steps is not None or a.eval_limit is not None
    rhash = recipe_hash(a.epochs)
    results_path = RESULTS_DIR / f"{BENCH}-{a.protocol}.json"
    if not smoke and not a.force and _cached(results_path, a.model, a.protocol, rhash):
        print(f"cached: {results_path} already holds {a.protocol} / {a.model} / recipe {rhash}; "
              f"use --force to re-run")
        return 0

    started = utc_now()
    command = "python bench/reference_seed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train_df, eval_df, names = load_protocol(a.protocol)
    if a.eval_limit is not None:
        eval_df = eval_df.head(a.eval_limit)
    tag = f"{a.protocol}-smoke" if smoke else a.protocol
    res = run_reference(train_df, eval_df, model=a.model, epochs=a.epochs, max_steps=a.max_steps,
                        out_dir=WORK_DIR / f"{BENCH}-{tag}", label_names=names, threads=a.threads,
                        resume=a.resume)

    niceness = os.nice(0)
    note = (f"ran at nice {niceness} in the background while other work shared the {os.cpu_count()} cores, "
            "so its times are an upper bound; the speed ratio is measured side by side separately"
            if niceness > 0 else "ran in the foreground; other work may have shared the cores")
    row = {"system": SYSTEM, **{k: res.get(k) for k in (
        "accuracy", "accuracy_trainer_kept", "f1", "f1_trainer_kept", "best_epoch_by_accuracy",
        "epoch_trainer_kept", "wall_s", "train_s", "samples_per_s", "peak_rss_mb", "trainable_params",
        "bundle_mb", "model", "threads", "steps", "train_samples", "eval_samples")},
        "recipe_hash": rhash, "epochs": res["epochs"], "note": note}
    if smoke:
        path = write_results(BENCH, tag, [row], [], command, started, results_dir=WORK_DIR)
    else:
        path = write_results(BENCH, a.protocol, [row], [], command, started)
    print(f"[reference] accuracy (best epoch) {row['accuracy']}, trainer-kept {row['accuracy_trainer_kept']}, "
          f"train {row['train_s']}s, wall {row['wall_s']}s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
