"""Batch scoring with Ray: the local engine vs the Ray engine on the same 200,000-row file, in one run.

Protocol `file200k`: the file of `bench/infer_imdb.py --protocol file200k` (bench/work/file200k.csv:
id + the first 50 characters of a test review, cycled), scored by the MiniLM-on-P1 bundle
(bench/work/minilm-p1) with
  - local: `sentilora predict RUN --input file200k.csv --output local.parquet` (one process, torch on
    every core, 10,000-row chunks);
  - ray: the same command with `--engine ray`, which starts a local Ray (`ray.init()`: every core) and
    scores with the default pool (one actor per core, 1 CPU and 1 torch thread each, the model loaded
    once per actor), writing a Parquet folder.
Each runs in its own subprocess, one after the other, on an otherwise idle machine. Wall time is from
process start to exit (Ray's start-up and shut-down included); rows/s = input rows / wall time.
Memory: the command's whole process tree (for Ray: the driver, GCS, raylet, log monitor, workers and
actors) sampled with psutil every 0.5 s, RSS summed over the processes; pages shared between processes
(libraries, Ray's object store in /dev/shm) count once per process that maps them, so the sum overstates
what the tree really holds. The local row also gives the kernel's exact peak (ru_maxrss) as a check on
the sampler. Correctness: both outputs read back; the same row count as the input, Ray's row_id =
0..n-1 with the id column in the same order as the local output, and the same label on every row.

    python bench/ray_imdb.py                # all 200,000 rows -> bench/results/ray_imdb-file200k.json
    python bench/ray_imdb.py --rows 2000    # smoke on the first 2,000 rows -> bench/work/ray_imdb-file200k-smoke.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK_DIR, utc_now, write_results  # noqa: E402
from infer_imdb import EXE, RUN, make_file  # noqa: E402

OUT_DIR = WORK_DIR / "ray_imdb"
MEMORY = "process tree RSS, summed, sampled every 0.5 s (psutil)"


def source(rows: int | None) -> Path:
    """The 200k-row file (made on first use), or its first `rows` rows for a smoke run."""
    full = WORK_DIR / "file200k.csv"
    if not full.is_file():
        make_file(full)
    if rows is None:
        return full
    import pandas as pd

    head = WORK_DIR / f"file200k-head{rows}.csv"
    pd.read_csv(full, nrows=rows).to_csv(head, index=False)
    return head


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd`; wall seconds, peak summed RSS of its process tree (sampled), its own ru_maxrss, exit code."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a fresh local Ray
    env.update(COLUMNS="200", RAY_USAGE_STATS_ENABLED="0")
    peak = {"rss": 0, "procs": 0}
    done = threading.Event()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:  # a worker that just exited
                        pass
                peak["rss"], peak["procs"] = max(peak["rss"], rss), max(peak["procs"], len(tree))
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    return {"wall_s": wall, "peak_rss_mb": peak["rss"] / 2**20, "processes": peak["procs"],
            "ru_maxrss_mb": usage.ru_maxrss / 1024, "rc": os.waitstatus_to_exitcode(status)}


def ray_phases(log: Path) -> dict:
    """The Ray engine's own timing line: start-up; reading, numbering and chunking; scoring and writing."""
    text = " ".join(log.read_text().split())
    m = re.search(r"ray: (\S+) actor\(s\) x (\d+) CPU\(s\); ready in ([\d.]+)s, read and chunked \d+ rows in ([\d.]+)s, "
                  r"scored and wrote in ([\d.]+)s", text)
    if not m:
        return {}
    return {"actors": m[1], "cpus_per_actor": int(m[2]), "ray_ready_s": float(m[3]), "ray_read_s": float(m[4]),
            "ray_score_write_s": float(m[5])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, help="score only the first N rows: a smoke run, written to bench/work/")
    args = ap.parse_args()
    if not (RUN / "sentilora.json").is_file():
        sys.exit(f"{RUN} is missing: run `python bench/infer_imdb.py --protocol file200k` once to train it.")
    started = utc_now()
    src = source(args.rows)
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir(parents=True)
    outputs = {"local": OUT_DIR / "local.parquet", "ray": OUT_DIR / "ray.parquet"}
    measured = {}
    for system, out in outputs.items():
        cmd = [EXE, "predict", str(RUN), "--input", str(src), "--output", str(out)]
        cmd += ["--engine", "ray"] if system == "ray" else []
        print("+", " ".join(cmd), flush=True)
        measured[system] = run_measured(cmd, OUT_DIR / f"{system}.log")
        if measured[system]["rc"] != 0:
            sys.exit(f"{system} scoring failed (exit {measured[system]['rc']}); see {OUT_DIR / f'{system}.log'}")

    import numpy as np
    import pandas as pd

    n = len(pd.read_csv(src, usecols=["id"]))
    local, ray = pd.read_parquet(outputs["local"]), pd.read_parquet(outputs["ray"])
    same_count = len(local) == len(ray) == n
    same_order = (same_count and ray["row_id"].tolist() == list(range(n))
                  and ray["id"].tolist() == local["id"].tolist() == list(range(n)))
    differing = int((ray["pred_label"].fillna("") != local["pred_label"].fillna("")).sum()) if same_count else None
    prob_cols = [c for c in local.columns if c.startswith("prob_")]
    max_diff = float(np.nanmax(np.abs(ray[prob_cols].to_numpy() - local[prob_cols].to_numpy()))) if same_count else None

    rows = []
    for system, m in measured.items():
        rows.append({
            "system": "local engine (sentilora predict --input)" if system == "local"
            else "ray engine (--engine ray, local Ray on this machine)",
            "rows": n,
            "wall_s": round(m["wall_s"], 1),
            "rows_per_s": round(n / m["wall_s"], 1),
            "peak_rss_mb": round(m["peak_rss_mb"]),
            "memory_measured": MEMORY + (f"; ru_maxrss {m['ru_maxrss_mb']:.0f} MB" if system == "local" else ""),
            "processes": m["processes"],
            **(ray_phases(OUT_DIR / "ray.log") if system == "ray" else {}),
        })
    speed = rows[1]["rows_per_s"] / rows[0]["rows_per_s"]
    targets = [
        {"name": "same row count as the input, both engines", "value": f"{len(local)} / {len(ray)} / {n}",
         "goal": "equal", "pass": same_count},
        {"name": "same order: Ray row_id = 0..n-1, id column equal to the local output", "value": same_order,
         "goal": "true", "pass": same_order},
        {"name": "rows whose label differs between the engines", "value": differing, "goal": "0", "pass": differing == 0},
        {"name": "largest probability difference between the engines", "value": max_diff, "goal": "report", "pass": None},
        {"name": "Ray engine rows/s / local engine rows/s (start-up included)", "value": round(speed, 3),
         "goal": "report", "pass": None},
        {"name": "Ray engine peak memory / local engine peak memory (process trees)",
         "value": round(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 2), "goal": "report", "pass": None},
    ]
    smoke = args.rows is not None
    command = "python bench/ray_imdb.py" + (f" --rows {args.rows}" if smoke else "")
    path = write_results("ray_imdb", "file200k-smoke" if smoke else "file200k", rows, targets, command, started,
                         results_dir=WORK_DIR if smoke else None)
    print(f"wrote {path}")
    for r in rows:
        print(r)
    for t in targets:
        print(t)


if __name__ == "__main__":
    main()
