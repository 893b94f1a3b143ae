"""Measure the README quickstart: train + evaluate + predict on the bundled IMDB sample with MiniLM.

Runs the exact CLI commands of scripts/quickstart.sh, each in its own subprocess, and records the
test-sample accuracy, the wall time of each step and the peak RSS of the largest step. Writes
bench/results/quickstart-imdb_sample.json and refreshes the README tables.

    python bench/quickstart.py            # about 7-10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK_DIR, utc_now, write_results  # noqa: E402

ACCURACY_GOAL = 0.80
TIME_GOAL_S = 600


def run(cmd: list[str]) -> tuple[float, float, str]:
    """Run one CLI step; return (wall seconds, peak RSS in MB of that step, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"step failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    # ru_maxrss of children is a running maximum over all waited-for children (KB on Linux).
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return wall, peak, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(WORK_DIR / "quickstart-run"), help="run folder (recreated)")
    args = ap.parse_args()
    started = utc_now()
    run_dir = Path(args.out)
    shutil.rmtree(run_dir, ignore_errors=True)
    exe = str(Path(sys.executable).with_name("sentilora"))

    train_s, rss_train, _ = run([exe, "train", "--model", "minilm", "--data", "imdb-sample", "--train.epochs", "4",
                                 "--out", str(run_dir), "--quiet"])
    eval_s, rss_eval, _ = run([exe, "evaluate", str(run_dir), "--compare-base"])
    pred_s, rss_pred, pred_out = run([exe, "predict", str(run_dir), "It was good.", "Not a fan, don't recommend.", "--json"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    m, base = metrics["metrics"], metrics["base_metrics"]
    labels, text, dec = [], pred_out.strip(), json.JSONDecoder()
    while text:  # --json prints one object per text (JSON Lines)
        obj, end = dec.raw_decode(text)
        labels.append(obj["label"])
        text = text[end:].strip()
    total = train_s + eval_s + pred_s
    bundle_mb = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()) / 1e6
    row = {
        "system": "sentilora quickstart (minilm, imdb-sample, default config)",
        "accuracy": round(m["accuracy"], 4),
        "f1": round(m["f1"], 4),
        "roc_auc": round(m["roc_auc"], 4),
        "base_accuracy": round(base["accuracy"], 4),
        "test_n": m["n"],
        "best_epoch": history["best_epoch"],
        "epochs_run": len(history["epochs"]),
        "train_wall_s": round(train_s, 1),
        "evaluate_wall_s": round(eval_s, 1),
        "predict_wall_s": round(pred_s, 1),
        "total_wall_s": round(total, 1),
        "samples_per_s": round(history["train_samples"] / history["train_seconds"], 2),
        "peak_rss_mb": round(max(rss_train, rss_eval, rss_pred)),
        "trainable_params": history["trainable_params"],
        "bundle_mb": round(bundle_mb, 2),
        "precision": history["precision"],
        "predictions": labels,
    }
    targets = [
        {"name": "quickstart accuracy on the bundled 500-review test sample", "value": row["accuracy"],
         "goal": ">= 0.80", "pass": row["accuracy"] >= ACCURACY_GOAL},
        {"name": "quickstart wall time, train + evaluate + predict (s)", "value": row["total_wall_s"],
         "goal": "<= ~600 (about 10 minutes on 2 CPU cores)", "pass": total <= TIME_GOAL_S},
    ]
    path = write_results("quickstart", "imdb_sample", [row], targets, "python bench/quickstart.py", started)
    print(json.dumps({"row": row, "targets": targets}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
