"""The benchmark suite (issue #15): sentilora's default recipe against its peers, four data sets x four sizes.

    python bench/suite.py                                    # the whole grid (see COST below)
    python bench/suite.py --datasets sst2,sst5 --sizes 16,64 --systems sentilora,tfidf
    python bench/suite.py --full-minutes 30                  # sentilora's full-data budget (default imdb=60,p3=60)
    python bench/suite.py --sentilora-overrides '{"lora.layers": 2}'   # a lever, as extra sentilora rows
    python bench/suite.py --render                           # train nothing: rebuild the files from the cache
    python bench/suite.py --datasets sst2 --sizes 16 --seeds 0 --systems tfidf --results-tag smoke  # -> bench/work/

Data sets: imdb (25k train / the 20k test split, 2 classes), p3 (the same reviews in 4 star classes),
sst2 and sst5 (Stanford Sentiment Treebank sentences, official train / test). Sizes: 16, 64 and
256 labels per class, balanced draws from train without replacement with seeds 0, 1, 2 (mean and
sd), and `full` (the whole train split, first seed only). Always the official test split; on imdb
and p3 the small cells score a fixed balanced subset of it (--eval-n, seed 0, the same for every
system) and `full` cells all 20,000 reviews.

Systems: sentilora (`Config()` defaults with model.name minilm; each seed sets train.seed and
data.seed too), tfidf (sentilora's TF-IDF + LR baseline), embed_lr (frozen MiniLM embeddings + LR),
setfit (the setfit package's defaults at 16 and 64 per class; 256 with --setfit-256) and, with
--with-seed, the seed notebook recipe at 16 and 64 per class (bench/peers.py has them all).

Every cell (data set, size, seed, system and its settings) runs in its own subprocess (peak RSS is
its own) and is cached in bench/work/suite/cells/<key>.json. The key hashes what determines the
result: for peers their own settings, so they are not re-run when sentilora changes; for sentilora
its fully resolved Config, so a change of its defaults re-runs its cells (--force SYSTEM re-runs).
Result files: bench/results/suite-<dataset>.json (rows: one per size x system, mean / sd over
seeds with the per-seed values; targets of the issue), built from every current cell in the cache.
A fresh checkout has no cache: the cells recorded in the result files are put back first (those
whose key still matches), so committed results are neither re-run nor lost.

COST on 2 CPU cores (estimates from sentilora's P2 step time, 0.46 s per 16 reviews, and smoke cells
run on a busy machine; not measured on an idle one yet): tfidf seconds per cell; embed_lr under a
minute per small cell (plus once per data set: its test embeddings, ~1 min for 2,000 reviews) and
~10 min for imdb/p3 full; sentilora ~1 min per small sst cell (200 steps at least, train.min_steps),
3-5 min per small imdb/p3 cell, sst full ~5-10 min, imdb/p3 full the 60-min budget + ~6 min scoring
20k reviews (measured 2026-12-06 with --full-minutes 30: 1,850 s training, 345 s scoring, per cell); setfit 1-3 min per sst cell, 2-16 min per imdb/p3 cell; --with-seed ~30 min per imdb/p3
cell (10 evaluations of 2,000 reviews). The default grid: roughly 6-10 hours.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CLASS_NAMES, REPO_ROOT, RESULTS_DIR, SUITE_DATASETS, WORK_DIR,
    code_version, config_for_key, machine_info, model_path, render_readme, utc_now, write_results,
)

BENCH = "suite"
SIZES = ("16", "64", "256", "full")
SYSTEMS = ("sentilora", "tfidf", "embed_lr", "setfit", "seed")
SUBSET_DATASETS = ("imdb", "p3")  # 20k test reviews: small cells are scored on a fixed subset
EVAL_SEED = 0
SETFIT_REDUCED_ITERATIONS = 20  # at 64+/class: the default oversampling makes tens of thousands of pairs
SETFIT_VENV = WORK_DIR / "setfit-venv"


# ------------------------------------------------------------------------------ cells: identity


def eval_n_for(dataset: str, size: str, eval_n: int) -> int | None:
    """How many test texts a cell scores (None = the whole test split)."""
    return eval_n if dataset in SUBSET_DATASETS and size != "full" and eval_n > 0 else None


def official_validation(inp: dict[str, Any]) -> bool:
    """A sentilora cell that picks its epoch on the data set's official validation split (SST's dev set)
    instead of a carve-out of train: the lever `--sentilora-overrides '{"data.validation_split": "validation"}'`."""
    wants = (inp.get("overrides") or {}).get("data.validation_split") == "validation"
    if wants and inp["dataset"] not in ("sst2", "sst5"):
        raise SystemExit(f"{inp['dataset']} has no official validation split; data.validation_split needs sst2 or sst5.")
    return wants


def sentilora_overrides(inp: dict[str, Any], work: Path) -> dict[str, Any]:
    """The product's defaults with the suite's data, MiniLM, the cell's seed, its budget and any lever.

    The data files are named relative to the repository root (portable keys); the child writes them.
    """
    folder = (work / "data").relative_to(REPO_ROOT)
    size, n = inp["size"], inp["eval_n"]
    train = folder / (f"{inp['dataset']}-full.parquet" if size == "full" else f"{inp['dataset']}-{size}-s{inp['seed']}.parquet")
    if official_validation(inp):  # a folder: train.parquet + the data set's own validation.parquet
        train = train.with_name(train.name.replace(".parquet", "-splits"))
    test = folder / f"{inp['dataset']}-test-{n or 'all'}.parquet"
    budget = {"train.max_minutes": inp["max_minutes"]} if inp.get("max_minutes") else {}
    return {"model.name": "minilm", "data.source": str(train), "data.test_file": str(test),
            "data.label_names": ",".join(CLASS_NAMES[inp["dataset"]]), "train.seed": inp["seed"], "data.seed": inp["seed"],
            **budget, **(inp.get("overrides") or {})}


def make_spec(inp: dict[str, Any], work: Path) -> dict[str, Any]:
    """Everything that determines a cell's result; its cache key is a hash of this."""
    import peers

    system = inp["system"]
    if system == "sentilora":
        from sentilora.config import Config

        resolved = Config().override(sentilora_overrides(inp, work)).to_dict()
        per_class = None if inp["size"] == "full" else int(inp["size"])
        settings: dict[str, Any] = {"resolved": config_for_key(resolved, inp["dataset"], per_class)}
    elif system == "tfidf":
        settings = peers.tfidf_settings()
    elif system == "embed_lr":
        settings = dict(peers.EMBED_SETTINGS)
    elif system == "setfit":
        settings = peers.setfit_settings(inp.get("setfit_iterations"))
    else:
        from reference_seed import recipe_hash

        settings = {"recipe_hash": recipe_hash(10), "epochs": 10}
    return {"inputs": inp, "settings": settings}


def cell_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_inputs(dataset: str, size: str, seed: int, system: str, args: argparse.Namespace,
                overrides: dict[str, Any] | None) -> dict[str, Any]:
    iters = None
    if system == "setfit":
        iters = args.setfit_iterations or (None if size == "16" else SETFIT_REDUCED_ITERATIONS)
    minutes = args.full_minutes.get(dataset) if system == "sentilora" and size == "full" else None
    return {"dataset": dataset, "size": size, "seed": seed, "system": system,
            "eval_n": eval_n_for(dataset, size, args.eval_n), "overrides": overrides or None,
            "max_minutes": minutes, "setfit_iterations": iters}


# ------------------------------------------------------------------------------ cells: cache + subprocess


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    return code_version()


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    return machine_info()["cpu"]


def setfit_python() -> str:
    """The interpreter that has setfit: this one, else bench/work/setfit-venv's."""
    import importlib.util

    if importlib.util.find_spec("setfit") is not None:
        return sys.executable
    venv = SETFIT_VENV / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise RuntimeError(f"setfit is not installed here nor in {SETFIT_VENV}; `pip install setfit` (see bench/README.md).")


def ensure_cell(inp: dict[str, Any], work: Path, *, force: bool, fresh: set[str]) -> dict[str, Any] | None:
    """The cell's figures: from the cache, else measured in a subprocess (None if it failed)."""
    import peers

    spec = make_spec(inp, work)
    key = cell_key(spec)
    cell_file = work / "cells" / f"{key}.json"
    size = "full" if inp["size"] == "full" else f"{inp['size']}/class"
    label = f"[{inp['dataset']} {size} seed {inp['seed']}] {inp['system']} {_variant(inp) or ''}".rstrip()
    if cell_file.exists() and not force:
        r = json.loads(cell_file.read_text())["result"]
        print(f"{label}: cached, accuracy {r.get('accuracy', float('nan')):.4f} ({cell_file.name})", flush=True)
        return r
    print(f"{label}: running", flush=True)
    cell_file.parent.mkdir(parents=True, exist_ok=True)
    cell_file.unlink(missing_ok=True)  # --force: a failed re-run must not leave the old figures looking fresh
    job = {"key": key, "spec": spec, "eval_seed": EVAL_SEED, "work": str(work), "cell_file": str(cell_file),
           "run_dir": str(work / "runs" / key),
           "code_version": _code_version(), "cpu": _cpu(), "model_dir": model_path("minilm"),
           "embed_tag": cell_key({"embed": peers.EMBED_SETTINGS})[:8],
           "sentilora_overrides": sentilora_overrides(inp, work) if inp["system"] == "sentilora" else None,
           "official_validation": official_validation(inp)}
    job_file, log = cell_file.with_suffix(".job.json"), cell_file.with_suffix(".log")
    job_file.write_text(json.dumps(job, indent=2, default=str))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        python = setfit_python() if inp["system"] == "setfit" else sys.executable
    except RuntimeError as e:
        print(f"{label}: FAILED: {e}", flush=True)
        return None
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([python, str(Path(__file__).with_name("peers.py")), str(job_file)], stdout=f,
                              stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, check=False)
    if proc.returncode != 0 or not cell_file.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        print(f"{label}: FAILED (exit {proc.returncode}; log {log}): {' | '.join(tail)}", flush=True)
        return None
    job_file.unlink(missing_ok=True)
    fresh.add(key)
    r = json.loads(cell_file.read_text())["result"]
    print(f"{label}: accuracy {r.get('accuracy', float('nan')):.4f}, macro-F1 {r.get('macro_f1', float('nan')):.4f}, "
          f"train {r['train_s']:.1f} s, peak {r['peak_rss_mb']} MB, eval n {r['eval_n']} "
          f"(cell {time.perf_counter() - t0:.0f} s)", flush=True)
    return r


def restore_cells(dataset: str, work: Path) -> int:
    """Put back into the cache the cells recorded in bench/results/suite-<dataset>.json whose key still
    matches today's settings, so a fresh checkout (bench/work/ is not committed) neither re-runs them
    nor drops them from the results file when it rewrites it. Returns how many were restored."""
    path = RESULTS_DIR / f"{BENCH}-{dataset}.json"
    if not path.exists():
        return 0
    restored = 0
    for row in json.loads(path.read_text())["rows"]:
        size = "full" if row["size"] == "full" else str(row["n_per_class"])
        variant, system = row.get("variant"), row["system"]
        for p in row["per_seed"]:
            inp = {"dataset": dataset, "size": size, "seed": p["seed"], "system": system,
                   "eval_n": eval_n_for(dataset, size, p["eval_n"]),
                   "overrides": json.loads(variant) if system == "sentilora" and variant else None,
                   "max_minutes": row.get("max_minutes"),
                   "setfit_iterations": int(variant.split()[-1]) if system == "setfit" and variant else None}
            cell_file = work / "cells" / f"{p['key']}.json"
            if cell_file.exists():
                continue
            spec = make_spec(inp, work)
            if cell_key(spec) != p["key"]:
                continue
            cell_file.parent.mkdir(parents=True, exist_ok=True)
            result = {k: v for k, v in p.items() if k not in ("seed", "key")}
            cell_file.write_text(json.dumps({"key": p["key"], **spec, "result": result}, indent=2, default=str))
            restored += 1
    return restored


def current_cells(dataset: str, work: Path) -> list[dict[str, Any]]:
    """Every cached cell of a data set whose key still matches today's settings (stale ones are left out)."""
    cells = []
    for path in sorted((work / "cells").glob("*.json")):
        if path.name.endswith(".job.json"):
            continue
        try:
            cell = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        inp = cell.get("inputs") or {}
        if inp.get("dataset") == dataset and cell_key(make_spec(inp, work)) == cell.get("key"):
            cells.append(cell)
    return cells


# ------------------------------------------------------------------------------ rows and targets


def _variant(inp: dict[str, Any]) -> str | None:
    if inp["system"] == "sentilora" and inp.get("overrides"):
        return json.dumps(inp["overrides"], sort_keys=True)
    if inp["system"] == "setfit" and inp.get("setfit_iterations"):
        return f"num_iterations {inp['setfit_iterations']}"
    return None


def _mean_sd(values: list[float], digits: int) -> tuple[float | None, float | None]:
    import statistics

    if not values:
        return None, None
    sd = round(statistics.stdev(values), digits) if len(values) > 1 else None
    return round(statistics.fmean(values), digits), sd


def build_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, system, variant, eval n, budget): means and sds over seeds, per-seed values kept."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        inp = c["inputs"]
        groups.setdefault((inp["size"], inp["system"], _variant(inp), inp["eval_n"], inp.get("max_minutes")), []).append(c)
    order = lambda g: (SIZES.index(g[0]), SYSTEMS.index(g[1]), g[2] or "", g[3] or 0, g[4] or 0)
    rows = []
    for g in sorted(groups, key=order):
        size, system, variant, _, minutes = g
        per_seed = sorted(({"seed": c["inputs"]["seed"], "key": c["key"], **c["result"]} for c in groups[g]),
                          key=lambda r: r["seed"])
        row: dict[str, Any] = {"size": "full" if size == "full" else f"{size}/class", "system": system, "variant": variant,
                               "n_per_class": None if size == "full" else int(size), "train_n": per_seed[0]["train_n"],
                               "seeds": [r["seed"] for r in per_seed]}
        for metric, digits in (("accuracy", 4), ("macro_f1", 4), ("train_s", 1)):
            row[metric], row[f"{metric}_sd"] = _mean_sd([r[metric] for r in per_seed if r.get(metric) is not None], digits)
        if any("model_alone_accuracy" in r for r in per_seed):  # a TF-IDF blend: the same models scored without it
            for metric in ("model_alone_accuracy", "model_alone_macro_f1"):
                row[metric], row[f"{metric}_sd"] = _mean_sd([r[metric] for r in per_seed if metric in r], 4)
        row.update({"peak_rss_mb": max(r["peak_rss_mb"] for r in per_seed), "eval_n": per_seed[0]["eval_n"],
                    "max_minutes": minutes, "per_seed": per_seed})
        rows.append(row)
    return rows


def _pick(rows: list[dict[str, Any]], size: str, system: str, *, default_only: bool = False) -> dict[str, Any] | None:
    """The row of `system` at `size`: sentilora's default recipe (no overrides) with `default_only`, else
    preferably the suite's standard variant (SetFit: num_iterations as --setfit-iterations leaves it), most seeds."""
    label = "full" if size == "full" else f"{size}/class"
    found = [r for r in rows if r["size"] == label and r["system"] == system and not (default_only and r["variant"])]
    standard = None if size == "16" or system != "setfit" else f"num_iterations {SETFIT_REDUCED_ITERATIONS}"
    return max(found, key=lambda r: (r["variant"] == standard, len(r["seeds"]), r["eval_n"]), default=None)


def _best_peer(rows: list[dict[str, Any]], size: str) -> tuple[dict[str, Any] | None, str]:
    """The peer with the best mean accuracy at `size`, and a note naming the peers compared."""
    peers = [p for p in (_pick(rows, size, s) for s in SYSTEMS[1:]) if p and p["accuracy"] is not None]
    return max(peers, key=lambda r: r["accuracy"], default=None), "peers compared: " + ", ".join(p["system"] for p in peers)


def build_targets(dataset: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for one data set's file; one whose inputs were not run has pass null and a note."""
    targets: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: Any, ok: bool | None, note: str | None = None) -> None:
        extra = {"note": note} if note else {}
        targets.append({"name": f"{dataset}: {name}", "value": value, "goal": goal, "pass": ok, **extra})

    for size in ("64", "256", "full"):
        s, (best, compared) = _pick(rows, size, "sentilora", default_only=True), _best_peer(rows, size)
        label = "full data" if size == "full" else f"{size} labels per class"
        goal = "every cell, 64 labels per class and up: sentilora mean >= best peer mean"
        if s and best:
            add(label + ": sentilora mean accuracy", f"{goal} ({best['system']}: {best['accuracy']})", s["accuracy"],
                s["accuracy"] >= best["accuracy"], compared)
        else:
            add(label + ": sentilora mean accuracy", goal, s and s["accuracy"], None,
                "sentilora or every peer not run at this size")
    s, sf = _pick(rows, "16", "sentilora", default_only=True), _pick(rows, "16", "setfit")
    best, compared = _best_peer(rows, "16")
    goal = "16 labels per class: sentilora >= SetFit mean, and within 2 points of the best peer"
    if s and sf and best:
        add("16 labels per class: sentilora mean accuracy", f"{goal} (SetFit {sf['accuracy']}; best peer "
            f"{best['system']} {best['accuracy']})", s["accuracy"],
            s["accuracy"] >= sf["accuracy"] and s["accuracy"] >= best["accuracy"] - 0.02, compared)
    else:
        add("16 labels per class: sentilora mean accuracy", goal, s and s["accuracy"], None,
            "sentilora or SetFit not run at 16/class")
    absolute = {"sst5": ("full", 0.52), "sst2": ("full", 0.89), "imdb": ("64", 0.80)}.get(dataset)
    if absolute:
        size, goal_v = absolute
        s = _pick(rows, size, "sentilora", default_only=True)
        label = "full data" if size == "full" else f"{size} labels per class"
        add(f"{label}: sentilora test accuracy", f">= {goal_v:.2f}", s and s["accuracy"],
            None if s is None else s["accuracy"] >= goal_v, None if s else "not run")
    ratios = []
    for size in SIZES:
        s, sf = _pick(rows, size, "sentilora", default_only=True), _pick(rows, size, "setfit")
        if s and sf:
            sf_by_seed = {r["seed"]: r["train_s"] for r in sf["per_seed"]}
            ratios += [(r["train_s"] / sf_by_seed[r["seed"]], size, r["seed"]) for r in s["per_seed"] if r["seed"] in sf_by_seed]
    goal = "training time: no sentilora cell takes longer than SetFit's at the same size"
    if ratios:
        worst = max(ratios)
        add("training time, sentilora / SetFit (worst cell)", goal, round(worst[0], 3), worst[0] <= 1.0,
            f"worst: {worst[1]}{'' if worst[1] == 'full' else '/class'} seed {worst[2]}; {len(ratios)} cell pairs")
    else:
        add("training time, sentilora / SetFit (worst cell)", goal, None, None, "no size with both sentilora and SetFit cells")
    return targets


# ------------------------------------------------------------------------------ the grid


def requested(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cells this invocation asks for, in run order."""
    systems = list(args.systems) + (["seed"] if args.with_seed and "seed" not in args.systems else [])
    override_sets = args.sentilora_overrides or [None]
    out = []
    for dataset in args.datasets:
        for size in args.sizes:
            for seed in (args.seeds[:1] if size == "full" else args.seeds):
                for system in systems:
                    if system == "setfit" and size not in (("16", "64", "256") if args.setfit_256 else ("16", "64")):
                        continue
                    if system == "seed" and size not in ("16", "64"):
                        continue
                    for ov in override_sets if system == "sentilora" else [None]:
                        out.append(cell_inputs(dataset, size, seed, system, args, ov))
    return out


def write_dataset(dataset: str, work: Path, started: str, smoke_dir: Path | None, fresh: set[str]) -> Path | None:
    """Write the data set's results file from every current cell in the cache (None if it has none)."""
    cells = current_cells(dataset, work)
    if not cells:
        return None
    rows = build_rows(cells)
    for row in rows:
        old = [r for r in row["per_seed"] if r["key"] not in fresh]
        if old:
            row["reused_from"] = f"{len(old)} of {len(row['per_seed'])} cells from earlier runs (per_seed: when, which code)"
    command = "python bench/suite.py " + " ".join(sys.argv[1:])
    first = min([started] + [r["started"] for row in rows for r in row["per_seed"]])
    path = write_results(BENCH, dataset, rows, build_targets(dataset, rows), command, first,
                         results_dir=smoke_dir or RESULTS_DIR)
    payload = json.loads(path.read_text())
    payload["note"] = (
        "accuracy and macro_f1 on the official test split (mean over seeds; *_sd the sample sd). "
        + (f"Cells below full data are scored on a fixed balanced subset of the 20k test reviews (seed {EVAL_SEED}, "
           "the same for every system; eval_n says how many); full cells on all 20,000. "
           if dataset in SUBSET_DATASETS else "")
        + "train_s: everything that learns from the training texts (model loading included; sentilora: the "
        "train() call, validation included). Each cell ran in its own process; peak_rss_mb is that process's. "
        "`started` is the first cell's start.")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    if smoke_dir is None:
        render_readme()
    return path


def _csv(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed or ())}")
    return items


def _minutes(text: str) -> dict[str, float]:
    if text.strip().lower() in ("", "none"):
        return {}
    if "=" not in text:
        return {d: float(text) for d in SUITE_DATASETS}
    out = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in _csv(text))}
    _csv(",".join(out), SUITE_DATASETS)  # unknown data set names are an error
    return out


def main() -> None:
    # SIGTERM (timeout, kill) -> SystemExit, so subprocess.run kills the running cell instead of orphaning it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=lambda s: _csv(s, SUITE_DATASETS), default=list(SUITE_DATASETS))
    ap.add_argument("--sizes", type=lambda s: _csv(s, SIZES), default=list(SIZES), help="labels per class, or full")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0, 1, 2],
                    help="draws per small size (full uses the first)")
    ap.add_argument("--systems", type=lambda s: _csv(s, SYSTEMS), default=list(SYSTEMS[:4]))
    ap.add_argument("--with-seed", action="store_true", help="also the seed notebook recipe at 16 and 64 per class (slow)")
    ap.add_argument("--setfit-256", action="store_true", help="also SetFit at 256 per class")
    ap.add_argument("--setfit-iterations", type=int, default=None,
                    help=f"SetFit num_iterations (default: the package's at 16/class, {SETFIT_REDUCED_ITERATIONS} above)")
    ap.add_argument("--eval-n", type=int, default=2000,
                    help="imdb/p3 cells below full data score this balanced test subset (0 = all 20k)")
    ap.add_argument("--full-minutes", type=_minutes, default=_minutes("imdb=60,p3=60"),
                    help="time budget of sentilora's full-data cells (train.max_minutes): 60 (all), imdb=60,p3=60 "
                         "(the default: 6 epochs of 25k reviews would take most of a day on 2 cores), or none")
    ap.add_argument("--sentilora-overrides", type=json.loads, action="append",
                    help="JSON dotted overrides for sentilora's cells (repeatable); its rows are named by them")
    ap.add_argument("--force", type=lambda s: _csv(s, SYSTEMS), default=[], help="re-run these systems' cells")
    ap.add_argument("--render", action="store_true", help="train nothing: rebuild the result files from the cache")
    ap.add_argument("--results-tag", help="smoke runs: cache and results under bench/work/suite-TAG/, not bench/results/")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = WORK_DIR / (f"suite-{args.results_tag}" if args.results_tag else "suite")
    smoke_dir = work if args.results_tag else None
    started = utc_now()
    failed, fresh = 0, set()
    for dataset in args.datasets:
        if smoke_dir is None and (n := restore_cells(dataset, work)):
            print(f"{dataset}: {n} cells restored to the cache from {RESULTS_DIR.name}/{BENCH}-{dataset}.json", flush=True)
        if not args.render:
            for inp in (c for c in requested(args) if c["dataset"] == dataset):
                r = ensure_cell(inp, work, force=inp["system"] in args.force, fresh=fresh)
                failed += r is None
        path = write_dataset(dataset, work, started, smoke_dir, fresh)
        if path is None:
            print(f"{dataset}: no cells in {work / 'cells'}; nothing written", flush=True)
            continue
        targets = json.loads(path.read_text())["targets"]
        for t in targets:
            verdict = "pending" if t["pass"] is None else "PASS" if t["pass"] else "FAIL"
            print(f"  {verdict:7s} {t['name']}: {t['value']} (goal {t['goal']})", flush=True)
        print(f"written to {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}", flush=True)
    if failed:
        sys.exit(f"{failed} cell(s) failed; see the logs named above.")


if __name__ == "__main__":
    main()
