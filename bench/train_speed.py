"""Training speed, side by side: the code before the speed work against the current code, on P1.

    git worktree add /tmp/before 8a15bd9          # the commit before the training-speed issue
    python bench/train_speed.py --before /tmp/before/src --seeds 0,1,2
    git worktree add /tmp/previous 60c2b46        # optional third arm: the code before a later change
    python bench/train_speed.py --before /tmp/before/src --previous /tmp/previous/src --previous-commit 60c2b46

For each seed, alternating, it trains and evaluates P1 (MiniLM, 1,000 IMDB reviews, 1,000 test
reviews, each code's own default recipe) once with the code in `--before`, once with the code in
`--previous` if given, and once with the current code, each in its own process on the same idle machine. Rows record accuracy, training seconds,
samples/s, achieved GFLOP/s (2 x 23 MFLOP per token: a forward pass, and a backward pass that needs
only the input gradients of the frozen weights) against the machine's bf16 peak, and peak RSS.
Each finished run is cached in bench/work/train_speed/ by (code, seed). Results:
bench/results/train_speed-p1.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK_DIR, load_protocol, utc_now, write_results  # noqa: E402

HERE = Path(__file__).resolve()
OUT = WORK_DIR / "train_speed"
FLOP_PER_TOKEN = 23e6  # MiniLM-L6 forward pass per token
PEAK_GFLOPS = 400.0  # 2 Zen 4 cores, bf16 (the estimate)


def mean_tokens(max_length: int = 256) -> float:
    """Mean tokens per P1 training text at the training length (what one sample costs)."""
    from sentilora import model as M
    from sentilora.tokens import encode

    train, _, _ = load_protocol("p1")
    ids = encode(M.load_tokenizer("minilm"), train["text"].tolist(), max_length=max_length, truncation="head_tail")
    return sum(map(len, ids)) / len(ids)


def run(code: str, src: str | None, seed: int, force: bool) -> dict[str, Any]:
    cache = OUT / f"{code}-seed{seed}.row.json"
    if cache.exists() and not force:
        print(f"[speed] {code} seed {seed}: cached", flush=True)
        return json.loads(cache.read_text())
    spec = {"protocol": "p1", "overrides": {"train.seed": seed}, "data": {}, "snapshots": [], "curve_n": None,
            "out": str(OUT / f"{code}-seed{seed}")}
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src  # the other checkout's package shadows the installed one
    print(f"[speed] {code} seed {seed}: training", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{code}-seed{seed}.log", "w") as f:
        proc = subprocess.run([sys.executable, str(HERE.parent / "train_imdb.py"), "_row", json.dumps(spec)], env=env,
                              stdout=f, stderr=subprocess.STDOUT, cwd=HERE.parents[1])
    if proc.returncode:
        sys.exit(f"{code} seed {seed} failed; see {OUT / f'{code}-seed{seed}.log'}")
    row = json.loads((OUT / f"{code}-seed{seed}.row.json").read_text())["row"]
    row = {"code": code, "seed": seed, **row}
    cache.write_text(json.dumps(row, indent=2))
    print(f"[speed] {code} seed {seed}: accuracy {row['accuracy']}, {row['samples_per_s']} samples/s", flush=True)
    return row


def quickstart(code: str, src: str | None, force: bool) -> dict[str, Any]:
    """The README quickstart's training and evaluation (4 epochs on the bundled sample: what the 200-step floor made of the 3 it asked for until 2026-12-07), with `code`."""
    cache = OUT / f"quickstart-{code}.row.json"
    if cache.exists() and not force:
        print(f"[speed] quickstart {code}: cached", flush=True)
        return json.loads(cache.read_text())
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    run_dir = OUT / f"quickstart-{code}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[speed] quickstart {code}: training", flush=True)
    cli = [sys.executable, "-m", "sentilora"]
    with open(OUT / f"quickstart-{code}.log", "w") as f:
        for cmd in (["train", "--model", "minilm", "--data", "imdb-sample", "--train.epochs", "4", "--out", str(run_dir), "--quiet"],
                    ["evaluate", str(run_dir)]):
            if subprocess.run(cli + cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=HERE.parents[1]).returncode:
                sys.exit(f"quickstart {code} failed; see {OUT / f'quickstart-{code}.log'}")
    history = json.loads((run_dir / "history.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    row = {"code": code, "accuracy": round(metrics["accuracy"], 4), "f1": round(metrics["f1"], 4),
           "train_s": history["train_seconds"], "epochs_run": len(history["epochs"]), "best_epoch": history["best_epoch"]}
    cache.write_text(json.dumps(row, indent=2))
    print(f"[speed] quickstart {code}: accuracy {row['accuracy']}, train {row['train_s']} s", flush=True)
    return row


def summary(rows: list[dict[str, Any]], tokens: float) -> dict[str, Any]:
    acc = [r["accuracy"] for r in rows]
    sps = [r["samples_per_s"] for r in rows]
    gflops = statistics.mean(sps) * tokens * 2 * FLOP_PER_TOKEN / 1e9
    return {"accuracy_mean": round(statistics.mean(acc), 4), "accuracy_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else None,
            "samples_per_s_mean": round(statistics.mean(sps), 2), "train_s_mean": round(statistics.mean(r["train_s"] for r in rows), 1),
            "gflops": round(gflops, 1), "share_of_bf16_peak": round(gflops / PEAK_GFLOPS, 3),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="src/ folder of a checkout of the commit before the speed work")
    ap.add_argument("--before-commit", default="8a15bd9")
    ap.add_argument("--previous", help="src/ folder of a third checkout to run alternating with the two (e.g. the commit "
                    "before a change made after the speed work); its rows are reported, the targets stay now / before")
    ap.add_argument("--previous-commit")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quickstart", action="store_true", help="instead: the README quickstart, before and now")
    args = ap.parse_args()
    if args.quickstart:
        started = utc_now()
        before, now = quickstart("before", args.before, args.force), quickstart("now", None, args.force)
        ratio = now["train_s"] / before["train_s"]
        write_results("train_speed", "quickstart", rows=[{"system": f"quickstart, {r['code']}", **r} for r in (before, now)],
                      targets=[{"name": "quickstart test accuracy now vs before", "value": now["accuracy"],
                                "goal": f">= {before['accuracy']} (before)", "pass": now["accuracy"] >= before["accuracy"]},
                               {"name": "quickstart training time now / before", "value": round(ratio, 3),
                                "goal": "<= 0.5", "pass": ratio <= 0.5}],
                      started=started, command=" ".join(sys.argv))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    started = utc_now()
    rows: list[dict[str, Any]] = []
    previous_code = f"previous-{args.previous_commit}"
    for seed in seeds:  # alternating, so drift of the machine hits both alike
        rows.append(run("before", args.before, seed, args.force))
        if args.previous:
            rows.append(run(previous_code, args.previous, seed, args.force))
        rows.append(run("now", None, seed, args.force))
    tokens = mean_tokens()
    before = summary([r for r in rows if r["code"] == "before"], tokens)
    now = summary([r for r in rows if r["code"] == "now"], tokens)
    speedup = now["samples_per_s_mean"] / before["samples_per_s_mean"]
    diff = now["accuracy_mean"] - before["accuracy_mean"]
    noise = max(before["accuracy_sd"] or 0, now["accuracy_sd"] or 0)
    targets = [
        {"name": "training samples/s, now / before (P1 default, means over seeds)", "value": round(speedup, 2),
         "goal": ">= 2.5", "pass": speedup >= 2.5},
        {"name": "accuracy difference now - before (points; within seed noise = within 2 sd of either)",
         "value": round(100 * diff, 2), "goal": f"within seed noise (2 sd = {200 * noise:.2f} points)",
         "pass": abs(diff) <= 2 * noise},
        {"name": "achieved GFLOP/s now (share of the ~400 GFLOP/s bf16 peak)", "value": now["gflops"],
         "goal": "report", "pass": None},
        {"name": "peak RSS of P1 training now (MB)", "value": now["peak_rss_mb_max"], "goal": "<= 2560",
         "pass": now["peak_rss_mb_max"] <= 2560},
    ]
    note = {"before_commit": args.before_commit, "mean_tokens_per_text": round(tokens, 1),
            "note": "each code's own default recipe; 'now' trains without dropout (encoder and LoRA), with eager "
                    "attention on a CPU, holds the frozen Linear weights in bf16 (the same bits autocast casts to) "
                    "and pads training batches to a few bucket widths (steady memory)"}
    means = [{"system": "before (mean)", **before}]
    if args.previous:
        previous = summary([r for r in rows if r["code"] == previous_code], tokens)
        means.append({"system": f"{previous_code} (mean)", **previous})
        targets.append({"name": f"training samples/s, now / {previous_code} (report)",
                        "value": round(now["samples_per_s_mean"] / previous["samples_per_s_mean"], 2), "goal": "report",
                        "pass": None})
    write_results("train_speed", "p1", rows=[{"system": f"{r['code']} seed {r['seed']}", **r} for r in rows]
                  + means + [{"system": "now (mean)", **now, **note}],
                  targets=targets, started=started, command=" ".join(sys.argv))


if __name__ == "__main__":
    main()
