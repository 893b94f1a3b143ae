"""Training on real IMDB with sentilora vs the seed recipe: P1 levers, P2 full data, P3 four classes.

    python bench/train_imdb.py p1                 # lever table + targets vs the reference (~1 h on 2 cores)
    python bench/train_imdb.py p1 --rows default,fp32   # only some rows (others come from the cache)
    python bench/train_imdb.py p2 --minutes 60    # 25k reviews, 60-minute budget, 20k test (~75 min)
    python bench/train_imdb.py p3 --minutes 60    # same, four star-rating classes

Every row is one `sentilora.train` + `evaluate_run` on the protocol's data (bench/common.py), run in
its own subprocess so its peak RSS is its own; the row's result is cached in
bench/work/train_imdb/<protocol>-<row>/row.json and reused while its settings are unchanged
(--force re-runs). Rows differ from the default recipe by the overrides shown in the table, so
each lever is measured on/off against the same default.

P2/P3 then choose, on the run's validation reviews, how the trained model reads long reviews
(truncated at its prediction length, or whole in windows of its training length: `choose_reading`),
and score the test split that way too; the P2 target is judged on that reading.

Reproduce one row with `python bench/train_imdb.py p1 --rows KEY --force` (KEY is the row's `key`).
P1 also times the reference (bench/reference_seed.py: HF Trainer + PEFT seed recipe) for one epoch
of steps in the same invocation, right after sentilora's default row, so the time ratio is side
by side; its accuracy comes from the full reference run stored in bench/results/reference_seed-p1.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, WORK_DIR, load_protocol, render_readme, utc_now, write_results  # noqa: E402

BENCH = "train_imdb"
ROWS_DIR = WORK_DIR / BENCH

# The settings every row shares (protocol data is filled in per run).
BASE = {"model.name": "minilm"}

# The recipe the P1 lever rows start from, written out (sentilora's defaults before this benchmark),
# so each lever is one change against the same fixed baseline even after the defaults move.
BASELINE: dict[str, Any] = {
    "model.max_length": 256, "model.truncation": "head_tail", "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.1,
    "lora.target_modules": None, "lora.layers": None, "train.epochs": 3, "train.batch_size": 16, "train.lr": 2e-3,
    "train.precision": "auto", "train.group_by_length": True, "train.cache_prefix": True,
}

# P1 rows: key -> (label, overrides on top of BASELINE). "default" is sentilora's current defaults
# with no overrides at all: the row the targets are judged on.
P1_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("sentilora default recipe", {}),
    "baseline": ("baseline (r8 q/v, 256 head+tail, bf16, grouped, 3 ep, lr 2e-3)", {}),
    "epochs5": ("5 epochs", {"train.epochs": 5}),
    "no-grouping": ("no length grouping", {"train.group_by_length": False}),
    "fp32": ("fp32 (no bf16 autocast)", {"train.precision": "fp32"}),
    "trunc-right": ("truncation right (keep start)", {"model.truncation": "right"}),
    "trunc-left": ("truncation left (keep end)", {"model.truncation": "left"}),
    "len512": ("512 tokens", {"model.max_length": 512}),
    "attn": ("LoRA on all attention", {"lora.target_modules": "attention"}),
    "attn-ffn": ("LoRA on attention + FFN", {"lora.target_modules": "all"}),
    "top2-cached": ("LoRA top 2 layers, prefix cached", {"lora.layers": 2}),
    "top2-uncached": ("LoRA top 2 layers, not cached", {"lora.layers": 2, "train.cache_prefix": False}),
    "lr1e-3": ("lr 1e-3", {"train.lr": 1e-3}),
    "lr5e-3": ("lr 5e-3", {"train.lr": 5e-3}),
    # combinations (candidates for the default recipe)
    "epochs6": ("6 epochs", {"train.epochs": 6}),
    "top3-all-10ep": ("LoRA top 3 layers on attention + FFN, r16, 10 epochs, prefix cached",
                      {"lora.layers": 3, "lora.target_modules": "all", "lora.r": 16, "lora.alpha": 32, "train.epochs": 10}),
    # rows keyed "default-..." change sentilora's current defaults rather than the fixed baseline
    "default-no-es": ("default, no early stopping", {"train.early_stopping_patience": 0}),
    "default-select-loss": ("default, best epoch by validation loss", {"train.select_metric": "loss"}),
    "default-10ep": ("default, 10 epochs, no early stopping", {"train.epochs": 10, "train.early_stopping_patience": 0}),
    "default-attn": ("default, LoRA on all attention", {"lora.target_modules": "attention"}),
    "default-trunc-right": ("default, truncation right (keep start)", {"model.truncation": "right"}),
    "default-trunc-left": ("default, truncation left (keep end)", {"model.truncation": "left"}),
    "default-len512": ("default, 512 tokens", {"model.max_length": 512}),
    "default-lr1e-3": ("default, lr 1e-3", {"train.lr": 1e-3}),
    "default-fp32": ("default, fp32 (no bf16 autocast)", {"train.precision": "fp32"}),
}


def row_overrides(key: str) -> dict[str, Any]:
    """The full overrides of a P1 row: "default" and "default-*" rows start from sentilora's defaults,
    the rest from the fixed BASELINE."""
    overrides = P1_ROWS[key][1]
    return dict(overrides) if key == "default" or key.startswith("default-") else {**BASELINE, **overrides}

REF_SYSTEM = "reference (HF Trainer + PEFT seed recipe)"


# ------------------------------------------------------------------------------ one row (child)


def _data_files(protocol: str) -> tuple[Path, Path, list[str]]:
    """Write the protocol's train/eval splits once to parquet (the files sentilora reads)."""
    folder = ROWS_DIR / "data"
    train_p, eval_p, names_p = (folder / f"{protocol}-{s}" for s in ("train.parquet", "eval.parquet", "names.json"))
    if not (train_p.exists() and eval_p.exists() and names_p.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        train_df, eval_df, names = load_protocol(protocol)
        for df, p in ((train_df, train_p), (eval_df, eval_p)):
            tmp = p.with_suffix(".tmp")
            df[["text", "label"]].to_parquet(tmp, index=False)
            tmp.replace(p)
        names_p.write_text(json.dumps(names))
    return train_p, eval_p, json.loads(names_p.read_text())


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _overrides(spec: dict[str, Any]) -> dict[str, Any]:
    train_p, eval_p, names = _data_files(spec["protocol"])
    return {**BASE, "data.source": str(train_p), "data.test_file": str(eval_p),
            "data.label_names": ",".join(names), **spec["data"], **spec["overrides"]}


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Train + evaluate one configuration in this process; return its figures."""
    import logging

    from sentilora.config import Config
    from sentilora.evaluate import evaluate_run
    from sentilora.train import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    overrides = _overrides(spec)
    cfg = Config().override(overrides)
    names = cfg.data.label_names
    out = Path(spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(cfg, out, progress=False, snapshot_minutes=spec.get("snapshots", ()))
    wall = time.perf_counter() - t0
    history = json.loads((out / "history.json").read_text())
    final = evaluate_run(out, split="test")  # with the TF-IDF baseline fitted on the run's own training texts
    evaluated = {"final": final["metrics"]}
    snaps = sorted((out / "snapshots").glob("*min"), key=lambda p: float(p.name[:-3])) if (out / "snapshots").is_dir() else []
    curve_file = None
    if snaps and spec.get("curve_n"):  # the learning curve on a fixed balanced subset of the test split
        import pandas as pd

        full = pd.read_parquet(cfg.data.test_file)
        per = spec["curve_n"] // full["label"].nunique()
        sub = full.groupby("label", group_keys=False).sample(n=per, random_state=0)
        curve_file = ROWS_DIR / "data" / f"{spec['protocol']}-eval-{spec['curve_n']}.parquet"
        sub.to_parquet(curve_file, index=False)
    for snap in snaps:
        kw = {"data": str(curve_file)} if curve_file else {}
        evaluated[snap.name] = evaluate_run(snap, split="test", output=snap / "metrics.json", baseline=False, **kw)["metrics"]
        evaluated[snap.name]["train_seconds"] = json.loads((snap / "history.json").read_text())["train_seconds"]
    if curve_file is not None:
        evaluated["end"] = evaluate_run(out, split="test", data=str(curve_file), output=out / "metrics-curve.json",
                                        baseline=False)["metrics"]
        evaluated["end"]["train_seconds"] = history["train_seconds"]
    m = evaluated["final"]
    row = {
        "accuracy": round(m["accuracy"], 4),
        "f1": round(m["f1"], 4),
        "eval_n": m["n"],
        "train_s": history["train_seconds"],
        "train_wall_s": round(wall, 1),
        "samples_per_s": round(history["train_samples"] / history["train_seconds"], 2),
        "epochs_run": len(history["epochs"]),
        "best_epoch": result.best_epoch,
        "val_accuracy": round(result.best_metrics["accuracy"], 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "trainable_params": history["trainable_params"],
        "bundle_mb": round(_dir_mb(out) - _dir_mb(out / "snapshots") if (out / "snapshots").is_dir() else _dir_mb(out), 2),
        "precision": history["precision"],
    }
    if final.get("baseline"):
        b = final["baseline"]
        row["baseline"] = {"system": f"{b['name']}, fitted on the same {b['train_n']} training texts",
                           "accuracy": round(b["metrics"]["accuracy"], 4), "f1": round(b["metrics"]["f1"], 4),
                           "eval_n": b["metrics"]["n"], "train_s": round(b["fit_seconds"], 1)}
    if len(names) > 2:  # multi-class: f1 is the macro average
        row["macro_f1"] = row["f1"]
        row["confusion_matrix"] = m["confusion_matrix"]
    curve = {k: v for k, v in evaluated.items() if k != "final"}
    if curve:
        row["learning_curve"] = {k: {"accuracy": round(v["accuracy"], 4), "f1": round(v["f1"], 4), "n": v["n"],
                                     "train_s": v["train_seconds"]} for k, v in curve.items()}
    return row


def _child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    row = run_row(spec)
    path = Path(spec["out"]).parent / (Path(spec["out"]).name + ".row.json")
    path.write_text(json.dumps({"spec": spec, "row": row}, indent=2))


def _row(protocol: str, key: str, name: str, overrides: dict[str, Any], data: dict[str, Any], *, force: bool,
         snapshots: tuple[float, ...] = (), cached_only: bool = False, shown: dict[str, Any] | None = None,
         curve_n: int | None = None) -> dict[str, Any] | None:
    """One row: from the cache when its resolved settings match, else trained in a subprocess.

    The cache is content-addressed by the fully resolved config (+ snapshots): a change of
    sentilora's defaults re-runs the rows it affects, and two rows that resolve to the same
    settings (e.g. "default" and "baseline" while they coincide) share one training run.
    """
    import hashlib

    from sentilora.config import Config

    spec: dict[str, Any] = {"protocol": protocol, "overrides": overrides, "data": data, "snapshots": list(snapshots),
                            "curve_n": curve_n}
    spec["resolved"] = Config().override(_overrides(spec)).to_dict()
    key_parts = [spec["resolved"], spec["snapshots"]] + ([curve_n] if curve_n else [])
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:10]
    out = ROWS_DIR / f"{protocol}-{key}-{digest}"
    spec["out"] = str(out)
    shown = overrides if shown is None else shown
    hits = sorted(ROWS_DIR.glob(f"{protocol}-*-{digest}.row.json"))
    if not force and hits:
        saved = json.loads(hits[0].read_text())
        print(f"[{protocol}] {name}: cached ({hits[0].name})", flush=True)
        row = {k: v for k, v in saved["row"].items() if k != "command"}
        return {"system": name, "key": key, "overrides": shown, **row, "measured_in": hits[0].name,
                "run_dir": str(hits[0].parent / hits[0].name.removesuffix(".row.json"))}
    if cached_only:
        return None
    print(f"[{protocol}] {name}: training {shown or '(defaults)'}", flush=True)
    log = out.parent / (out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, __file__, "_row", json.dumps(spec)], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"row {name!r} failed; see {log}")
    row = json.loads((out.parent / (out.name + ".row.json")).read_text())["row"]
    print(f"[{protocol}] {name}: accuracy {row['accuracy']}, train {row['train_s']} s", flush=True)
    return {"system": name, "key": key, "overrides": shown, **row, "measured_in": "this run", "run_dir": str(out)}


def choose_reading(run: Path) -> dict[str, Any]:
    """How the trained model should read long reviews, chosen on the run's validation texts, then scored on test.

    Candidates: truncated at the bundle's prediction length (head+tail, the default), and the whole
    review in overlapping windows of the training length (`--long-texts chunk --max-length N`).
    Ties keep the default. Cached in RUN/reading.json (the model does not change once trained).
    """
    from sentilora.bundle import Manifest
    from sentilora.evaluate import evaluate_run

    cache = run / "reading.json"
    if cache.exists():
        return json.loads(cache.read_text())
    man = Manifest.read(run)
    candidates = {"truncate": {"max_length": man.reads, "long_texts": "truncate"},
                  "chunk": {"max_length": man.max_length, "long_texts": "chunk"}}
    val = {}
    for name, how in candidates.items():
        print(f"  reading {name} ({how}): scoring the validation texts", flush=True)
        val[name] = evaluate_run(run, split="validation", baseline=False, output=run / f"metrics-validation-{name}.json",
                                 **how)["metrics"]
    best = max(candidates, key=lambda k: val[k]["accuracy"])  # first wins a tie: the default
    print(f"  reading {best} chosen on validation; scoring the test split", flush=True)
    test = evaluate_run(run, split="test", baseline=False, output=run / f"metrics-test-{best}.json", **candidates[best])
    chosen = {"chosen": best, **candidates[best], "validation": {k: {"accuracy": round(v["accuracy"], 4), "n": v["n"]}
                                                                   for k, v in val.items()},
              "accuracy": round(test["metrics"]["accuracy"], 4), "f1": round(test["metrics"]["f1"], 4),
              "eval_n": test["metrics"]["n"]}
    cache.write_text(json.dumps(chosen, indent=2))
    return chosen


# ------------------------------------------------------------------------------ reference timing


def reference_epoch(protocol: str) -> dict[str, Any]:
    """Time one epoch's worth of reference steps (no evaluation), in a subprocess."""
    code = (
        "import json, sys; sys.path.insert(0, 'bench');"
        "from reference_seed import run_reference; from common import load_protocol, WORK_DIR;"
        f"tr, ev, names = load_protocol({protocol!r});"
        "steps = -(-len(tr) // 4);"
        "r = run_reference(tr, ev, epochs=1, max_steps=steps, evaluate=False, label_names=names,"
        " out_dir=WORK_DIR / 'reference_seed-epoch-timing', progress_every=50);"
        "print('RESULT ' + json.dumps(r))"
    )
    print(f"[{protocol}] reference: timing one epoch of seed-recipe steps", flush=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"reference timing failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def _reference_full(protocol: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"reference_seed-{protocol}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return {**data["rows"][0], "machine_gpu": (data.get("machine") or {}).get("gpu")}


# ------------------------------------------------------------------------------ protocols


def bench_p1(args: argparse.Namespace) -> Path:
    started = utc_now()
    wanted = [] if args.render else list(P1_ROWS) if not args.rows else [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in wanted if r not in P1_ROWS]
    if unknown:
        sys.exit(f"unknown row(s) {unknown}; rows: {', '.join(P1_ROWS)}")
    rows: list[dict[str, Any]] = []
    ref_epoch: dict[str, Any] | None = None
    for key, (name, overrides) in P1_ROWS.items():
        row = _row("p1", key, name, row_overrides(key), {}, force=args.force and key in wanted, cached_only=key not in wanted,
                   shown=overrides)
        if row is not None:
            row.pop("run_dir")  # where the model lies: for P2/P3's reading choice, not a column of the table
            rows.append(row)
        if key == "default" and key in wanted and not args.no_reference_timing:
            ref_epoch = reference_epoch("p1")  # right after the default row: side by side
    default = next((r for r in rows if r["system"] == P1_ROWS["default"][0]), None)
    ref = _reference_full("p1")

    ref_rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    timed_with_default = False  # the reused reference epoch was timed right after this very default row
    if ref_epoch is None:
        prev = RESULTS_DIR / f"{BENCH}-p1.json"
        if prev.exists():
            old = json.loads(prev.read_text())
            old_default = next((r for r in old["rows"] if r["system"] == P1_ROWS["default"][0]), None)
            for r in old["rows"]:
                if r["system"].startswith("reference, 1 epoch"):
                    r.setdefault("reused_from", f"{prev.relative_to(RESULTS_DIR.parents[1])} @ {old['code_version'][:12]} "
                                                f"(started {old['started']})")
                    ref_rows.append(r)
                    timed_with_default = bool(
                        default and old_default and old_default["train_s"] == default["train_s"]
                        and any(t.get("side_by_side") for t in old["targets"]))
    else:
        epochs = 10
        ref_rows.append({
            "system": "reference, 1 epoch of steps timed in this run",
            "train_s": ref_epoch["train_s"], "samples_per_s": ref_epoch["samples_per_s"],
            "train_s_10_epochs_est": round(ref_epoch["train_s"] * epochs, 1),
            "peak_rss_mb": ref_epoch["peak_rss_mb"], "trainable_params": ref_epoch["trainable_params"],
            "bundle_mb": ref_epoch["bundle_mb"],
        })
    if ref is not None:
        ref_rows.append({
            "system": "reference, full 10-epoch run (bench/results/reference_seed-p1.json"
                      + (f", on {ref['machine_gpu']}: its times are GPU times)" if ref.get("machine_gpu") else ")"),
            "accuracy": ref["accuracy"], "f1": ref["f1"], "best_epoch": ref["best_epoch_by_accuracy"],
            "accuracy_trainer_kept": ref["accuracy_trainer_kept"], "train_s": ref["train_s"],
            "samples_per_s": ref["samples_per_s"], "peak_rss_mb": ref["peak_rss_mb"],
            "trainable_params": ref["trainable_params"], "bundle_mb": ref["bundle_mb"], "note": ref.get("note"),
            "reused_from": "bench/results/reference_seed-p1.json",
        })
    if default is not None and ref is not None:
        goal = ref["accuracy"] + 0.02
        targets.append({"name": "P1 accuracy: sentilora default vs reference best epoch + 2.0 points",
                        "value": default["accuracy"], "goal": f">= {goal:.4f} (reference {ref['accuracy']:.4f})",
                        "pass": default["accuracy"] >= goal - 1e-9})
    elif default is not None:
        targets.append({"name": "P1 accuracy: sentilora default vs reference best epoch + 2.0 points",
                        "value": default["accuracy"], "goal": "reference run not finished yet", "pass": None})
    seeds_file = RESULTS_DIR / f"{BENCH}-p1-seeds.json"
    if seeds_file.exists():  # the same target on means over several seeds (bench/seeds_p1.py)
        for t in json.loads(seeds_file.read_text())["targets"]:
            targets.append({**t, "from": str(seeds_file.relative_to(RESULTS_DIR.parents[1]))})
    timed = next((r for r in ref_rows if "train_s_10_epochs_est" in r), None)
    if default is not None and timed is not None:
        ratio = default["train_s"] / timed["train_s_10_epochs_est"]
        side_by_side = (default.get("measured_in") == "this run" and "reused_from" not in timed) or timed_with_default
        targets.append({"name": "P1 training time: sentilora default / reference (10 epochs of its steps)",
                        "value": round(ratio, 4), "goal": "<= 0.25", "pass": ratio <= 0.25,
                        "side_by_side": side_by_side,
                        **({} if side_by_side else {"note": "the two timings come from different invocations; "
                            "re-run `python bench/train_imdb.py p1 --rows default --force` to time them side by side"})})
    return write_results(BENCH, "p1", rows + ref_rows, targets, "python bench/train_imdb.py " + " ".join(sys.argv[1:]),
                         started)


def bench_full(args: argparse.Namespace, protocol: str) -> Path:
    started = utc_now()
    overrides = {"train.max_minutes": args.minutes, **json.loads(args.overrides or "{}")}
    data = {"data.val_fraction": 0.04}
    marks = tuple(m for m in (15, 30) if m < args.minutes)
    row = _row(protocol, "main", f"sentilora {protocol}", overrides, data, force=args.force, snapshots=marks,
               curve_n=args.curve_n)
    reading = choose_reading(Path(row.pop("run_dir")))
    how = f"{reading['long_texts']}, {reading['max_length']} tokens" + (" per window" if reading["long_texts"] == "chunk" else "")
    read_row = {"system": f"sentilora {protocol}, the same model reading as chosen on validation ({how})", "key": "reading",
                "overrides": f"predict/evaluate --long-texts {reading['long_texts']} --max-length {reading['max_length']}",
                "accuracy": reading["accuracy"], "f1": reading["f1"], "eval_n": reading["eval_n"], "train_s": row["train_s"],
                "val_accuracy": reading["validation"][reading["chosen"]]["accuracy"],
                "validation_by_reading": {k: v["accuracy"] for k, v in reading["validation"].items()},
                "measured_in": row["measured_in"]}
    targets = []
    if protocol == "p2":
        targets.append({"name": f"P2 accuracy on the 20k test split within {args.minutes:g} min of training (MiniLM), "
                                f"reading chosen on validation ({how})",
                        "value": read_row["accuracy"], "goal": ">= 0.920 within 60 min",
                        "pass": read_row["accuracy"] >= 0.92 and row["train_s"] <= 60 * 60 + 120 and args.minutes <= 60})
    rows = [row, read_row] + ([{"key": "tfidf", **row.pop("baseline")}] if row.get("baseline") else [])
    path = write_results(BENCH, protocol, rows, targets, "python bench/train_imdb.py " + " ".join(sys.argv[1:]), started)
    data = json.loads(path.read_text())
    by_reading = ", ".join(f"{k} {v['accuracy']}" for k, v in reading["validation"].items())
    data["note"] = (f"train_s is wall time from the first step to the end of the last validation: training stops at the "
                    f"{args.minutes:g}-minute budget, then the epoch in progress is validated. learning_curve scores the "
                    f"snapshots taken at 15 and 30 minutes and the final model on a fixed balanced subset of "
                    f"{args.curve_n} test reviews; accuracy and f1 are on all {row['eval_n']} test reviews. The 'reading' row is the "
                    f"same trained model, reading long reviews the way that scored best on the run's "
                    f"{reading['validation']['truncate']['n']} validation reviews (validation accuracy by reading: {by_reading}); "
                    "the target is judged on it.")
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    render_readme()
    return path


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_row":
        _child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("protocol", choices=["p1", "p2", "p3"])
    ap.add_argument("--rows", help=f"P1: comma-separated row keys to (re)run, the rest come from the cache: {', '.join(P1_ROWS)}")
    ap.add_argument("--force", action="store_true", help="re-run rows even when a cached result matches")
    ap.add_argument("--render", action="store_true",
                    help="P1: train nothing; rebuild the results file from cached rows and the stored reference runs")
    ap.add_argument("--no-reference-timing", action="store_true", help="P1: skip the side-by-side reference epoch")
    ap.add_argument("--minutes", type=float, default=60.0, help="P2/P3: training time budget (train.max_minutes)")
    ap.add_argument("--curve-n", type=int, default=4000,
                    help="P2/P3: the 15/30-minute snapshots and the end model are also scored on a fixed balanced "
                         "subset of this many test reviews (the final model is always scored on all of them)")
    ap.add_argument("--overrides", help='P2/P3: extra sentilora overrides as JSON, e.g. \'{"lora.layers": 2}\'')
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = bench_p1(args) if args.protocol == "p1" else bench_full(args, args.protocol)
    print(json.dumps(json.loads(path.read_text())["targets"], indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
