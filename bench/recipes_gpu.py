"""Recipe search on a GPU machine for issue #15, on validation data only (test is recorded, not used to choose).

A lent GPU trains MiniLM on full SST in about a minute, so one device call can try the levers that
would take a CPU day. Two steps:

    python bench/recipes_gpu.py prepare DIR        # here: the same draws as bench/recipes.py, as parquet in DIR
    python bench/recipes_gpu.py run DIR --out OUT  # on the GPU: every variant, rows appended to OUT/rows.jsonl
    python bench/recipes_gpu.py collect OUT/rows.jsonl   # here: bench/results/recipes-gpu.json + README

`run` works through VARIANTS in order with --workers processes, stops starting cells after
--budget-s seconds, then gives the best variants of the full-data groups a second seed while
time is left. Each row is written as soon as its cell ends, so a run stopped at its limit keeps them.
Draws: IMDB and SST-5 16/64 per class as bench/recipes.py draws them (pandas groupby-sample with the
seed); the full SST groups train on the official train split (10% carved out for the best-epoch
choice, as in the suite), score the official validation split and record the test split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALL = {"lora.target_modules": ["all"]}
# group -> (data set, labels per class or None for all, seeds, {variant: overrides}); first come first run.
VARIANTS: dict[str, tuple[str, int | None, tuple[int, ...], dict[str, dict[str, Any]]]] = {
    "sst5-full": ("sst5", None, (0,), {
        "default": {},
        "3 epochs": {"train.epochs": 3},
        "3 epochs, all linears r16, lr 1e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3, "train.epochs": 3},
        "4 epochs, all linears r16, lr 5e-4": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 5e-4, "train.epochs": 4},
        "3 epochs, all linears r64, lr 5e-4": {**ALL, "lora.r": 64, "lora.alpha": 128, "train.lr": 5e-4, "train.epochs": 3},
        "3 epochs, all linears r16, lr 1e-3, encoder dropout 0.1": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3,
                                                                    "train.epochs": 3, "model.dropout": None},
        "3 epochs, lr 1e-3": {"train.lr": 1e-3, "train.epochs": 3},
        "3 epochs, attention r16, lr 1e-3": {"lora.target_modules": ["attention"], "lora.r": 16, "lora.alpha": 32,
                                             "train.lr": 1e-3, "train.epochs": 3},
        "3 epochs, batch 32": {"train.batch_size": 32, "train.epochs": 3},
        "5 epochs, all linears r16, lr 2e-4": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 2e-4, "train.epochs": 5},
        "2 epochs, all linears r16, lr 1e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3, "train.epochs": 2},
        "3 epochs, cls pooling": {"model.pooling": "cls", "train.epochs": 3},
    }),
    "sst2-full": ("sst2", None, (0,), {
        "default": {},
        "3 epochs": {"train.epochs": 3},
        "3 epochs, all linears r16, lr 1e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3, "train.epochs": 3},
        "3 epochs, all linears r64, lr 5e-4": {**ALL, "lora.r": 64, "lora.alpha": 128, "train.lr": 5e-4, "train.epochs": 3},
        "3 epochs, all linears r16, lr 1e-3, encoder dropout 0.1": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3,
                                                                    "train.epochs": 3, "model.dropout": None},
    }),
    "imdb-64": ("imdb", 64, (0, 1, 2, 3, 4), {
        "default": {},
        "400 steps at least": {"train.min_steps": 400},
        "lr 1e-3": {"train.lr": 1e-3},
        "lr 1e-3, 400 steps at least": {"train.lr": 1e-3, "train.min_steps": 400},
        "lr 5e-4, 400 steps at least": {"train.lr": 5e-4, "train.min_steps": 400},
        "prototype head": {"model.head_init": "prototypes"},
        "contrastive 50": {"train.contrastive_steps": 50},
        "all linears r16, lr 1e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3},
    }),
    "sst5-16": ("sst5", 16, (0, 1, 2, 3, 4), {
        "default": {},
        "all linears r16": {**ALL, "lora.r": 16, "lora.alpha": 32},
    }),
    # Round 2 (the second device call): around round 1's best full-SST variant, 2 epochs on all linears.
    "sst5-full-2": ("sst5", None, (0, 1), {
        "1 epoch, all linears r16, lr 1e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3, "train.epochs": 1},
        "2 epochs, all linears r16, lr 2e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.epochs": 2},
        "2 epochs, all linears r32, lr 1e-3": {**ALL, "lora.r": 32, "lora.alpha": 64, "train.lr": 1e-3, "train.epochs": 2},
        "2 epochs, all linears r16, lr 1e-3, batch 32": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3,
                                                          "train.epochs": 2, "train.batch_size": 32},
        "2 epochs, all linears r16, lr 1e-3, encoder dropout 0.1": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3,
                                                                    "train.epochs": 2, "model.dropout": None},
    }),
    "sst2-full-2": ("sst2", None, (0, 1), {
        "2 epochs, all linears r16, lr 1e-3": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3, "train.epochs": 2},
        "2 epochs, all linears r16, lr 1e-3, batch 32": {**ALL, "lora.r": 16, "lora.alpha": 32, "train.lr": 1e-3,
                                                          "train.epochs": 2, "train.batch_size": 32},
    }),
}
SECOND_SEED_GROUPS = ("sst5-full", "sst2-full")


def _tag(dataset: str, per_class: int | None, seed: int) -> str:
    return f"{dataset}-{per_class or 'full'}-s{seed if per_class else 0}"


def prepare(out: Path) -> None:
    """Write every draw VARIANTS needs (and each data set's validation/test file) under `out`."""
    from common import sst
    from recipes import data, draw

    out.mkdir(parents=True, exist_ok=True)
    for dataset, per_class, seeds, _ in VARIANTS.values():
        train, val, names = data(dataset)
        val.to_parquet(out / f"{dataset}-val.parquet", index=False)
        if dataset.startswith("sst"):
            sst(dataset, "test").to_parquet(out / f"{dataset}-test.parquet", index=False)
        for seed in seeds if per_class else (0,):
            draw(train, per_class, seed).to_parquet(out / f"{_tag(dataset, per_class, seed)}-train.parquet", index=False)
        (out / f"{dataset}-names.json").write_text(json.dumps(names))
    print(f"prepared {len(list(out.glob('*.parquet')))} files in {out}")


def _cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train one cell and score it; never raises (the error goes into the row)."""
    import torch

    torch.set_num_threads(job["threads"])
    from sentilora.config import Config
    from sentilora.evaluate import evaluate_run
    from sentilora.train import train

    d, row = Path(job["data"]), {k: job[k] for k in ("group", "variant", "dataset", "per_class", "seed", "overrides")}
    run = Path(job["work"]) / f"{job['group']}-{hashlib.sha256(job['variant'].encode()).hexdigest()[:8]}-s{job['seed']}"
    names = json.loads((d / f"{job['dataset']}-names.json").read_text())
    settings = {"model.name": "minilm", "data.source": str(d / f"{_tag(job['dataset'], job['per_class'], job['seed'])}-train.parquet"),
                "data.label_names": ",".join(names), "train.seed": job["seed"], "data.seed": job["seed"], **job["overrides"]}
    try:
        t0 = time.perf_counter()
        train(Config().override(settings), run, progress=False)
        h = json.loads((run / "history.json").read_text())
        row.update(train_s=round(h["train_seconds"], 1), steps=h["steps"], epochs=len(h["epochs"]),
                   device=h.get("device"), precision=h.get("precision"))
        for split in ("val", "test"):
            path = d / f"{job['dataset']}-{split}.parquet"
            if path.exists():
                m = evaluate_run(run, data=str(path), baseline=False)["metrics"]
                row[f"{split}_accuracy"], row[f"{split}_f1"], row[f"{split}_n"] = round(m["accuracy"], 4), round(m["f1"], 4), m["n"]
        row["wall_s"] = round(time.perf_counter() - t0, 1)
    except Exception:  # noqa: BLE001 - one failing cell must not end the sweep
        row["error"] = traceback.format_exc()[-2000:]
    return row


def run(data: Path, out: Path, workers: int, budget_s: float, only: list[str] | None = None) -> None:
    import torch
    from common import utc_now

    out.mkdir(parents=True, exist_ok=True)
    rows_path, start, started = out / "rows.jsonl", time.monotonic(), utc_now()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, GPU {gpu}, {workers} workers, budget {budget_s:.0f} s", flush=True)
    threads = max(1, (os.cpu_count() or 2) // workers)
    base = {"data": str(data), "work": tempfile.mkdtemp(prefix="recipes-gpu-"), "threads": threads}
    queue = [{**base, "group": g, "variant": v, "dataset": ds, "per_class": pc, "seed": s, "overrides": o}
             for g, (ds, pc, seeds, variants) in VARIANTS.items() if not only or g in only
             for v, o in variants.items() for s in seeds]
    done: list[dict[str, Any]] = []
    second_round = False
    # spawn, not fork: this process has initialised CUDA, which a forked child cannot use
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool, rows_path.open("a") as sink:
        running = set()
        while queue or running:
            while queue and len(running) < workers and time.monotonic() - start < budget_s:
                running.add(pool.submit(_cell, queue.pop(0)))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                row = {**f.result(), "gpu": gpu, "started": started}
                done.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                what = ("ERROR" if "error" in row else
                        f"val {row.get('val_accuracy')}, test {row.get('test_accuracy')}, {row.get('train_s')} s")
                print(f"{time.monotonic() - start:5.0f} s  [{row['group']}] {row['variant']} seed {row['seed']}: {what}", flush=True)
            if not queue and not second_round:  # the best 3 full-data variants of each group get a second seed
                second_round = True
                for g in (g for g in SECOND_SEED_GROUPS if not only or g in only):
                    ok = sorted((r for r in done if r["group"] == g and "error" not in r), key=lambda r: -r["val_accuracy"])
                    queue += [{**base, **{k: r[k] for k in ("group", "variant", "dataset", "per_class", "overrides")}, "seed": 1}
                              for r in ok[:3]]
    print(f"{len(done)} cells, {sum('error' in r for r in done)} errors, {time.monotonic() - start:.0f} s", flush=True)


def collect(rows_path: Path) -> None:
    """Mean per (group, variant) into bench/results/recipes-gpu.json (and the README)."""
    import numpy as np
    from common import utc_now, write_results

    cells = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    ok = [c for c in cells if "error" not in c]
    rows = []
    for g, (_, _, _, variants) in VARIANTS.items():
        for v in variants:
            mine = [c for c in ok if c["group"] == g and c["variant"] == v]
            if not mine:
                continue
            val = [c["val_accuracy"] for c in mine]
            test = [c["test_accuracy"] for c in mine if "test_accuracy" in c]
            rows.append({"system": f"{g}: {v}", "overrides": mine[0]["overrides"], "seeds": [c["seed"] for c in mine],
                         "val_accuracy_mean": round(float(np.mean(val)), 4), "val_accuracy": val,
                         "test_accuracy": test or None, "train_s": [c["train_s"] for c in mine],
                         "steps": [c["steps"] for c in mine], "gpu": mine[0]["gpu"]})
    errors = [f"{c['group']}: {c['variant']} s{c['seed']}" for c in cells if "error" in c]
    started = min((c.get("started") for c in cells if c.get("started")), default=utc_now())
    path = write_results("recipes", "gpu", rows, [{"errors": errors}] if errors else [],
                         f"python bench/recipes_gpu.py run (on {ok[0]['gpu'] if ok else '?'})", started)
    print(f"{len(rows)} rows, {len(errors)} failed cells -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare").add_argument("dir", type=Path)
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--workers", type=int, default=6)
    r.add_argument("--budget-s", type=float, default=330, help="start no cell after this many seconds")
    r.add_argument("--only", help=f"comma-separated groups: {', '.join(VARIANTS)}")
    sub.add_parser("collect").add_argument("rows", type=Path)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.dir)
    elif args.cmd == "run":
        run(args.dir, args.out, args.workers, args.budget_s, args.only.split(",") if args.only else None)
    else:
        collect(args.rows)


if __name__ == "__main__":
    main()
