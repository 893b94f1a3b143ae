"""Memory of P1 training step by step, with training batches padded one way or another (issue #14).

    python bench/train_memory.py                                  # dynamic, fixed, 8, 16, 32, 64
    python bench/train_memory.py --variants dynamic,bucket --steps 200

Takes optimiser steps of sentilora's default recipe (MiniLM, 1,000 P1 training reviews at up to 256
tokens, batch 16, length-grouped epochs) through its own setup and step code, and reads the
process's resident memory after every step. Variants: how the training batches are padded.

- `dynamic`: to the batch's longest text, a new width almost every batch (sentilora up to 60c2b46);
- `bucket`: sentilora's `batching.bucket_width` (today's training);
- `fixed`: the same 16 reviews of 256 tokens every step (one shape: what steady memory looks like);
- a number N: to the next multiple of N tokens.

Each variant runs in its own process (its own allocator and high-water mark), one after another.
Exploration tool: prints RSS at steps 20, 50, 100, ... and the peak, with the seconds taken; the
goal itself (peak RSS of a whole P1 run) is measured by bench/train_speed.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_imdb import _data_files  # noqa: E402

MARKS = (20, 50, 100, 150, 200, 300, 400)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def child(variant: str, steps: int) -> dict:
    import torch

    from sentilora import batching as B
    from sentilora import distributed as D
    from sentilora import train as T
    from sentilora import train_step as S
    from sentilora.config import Config

    train_p, _, names = _data_files("p1")
    cfg = Config().override({"model.name": "minilm", "data.source": str(train_p), "data.label_names": ",".join(names)})
    s = T._setup(cfg, D.SINGLE)
    ids, y = s.enc["train"], s.data.splits["train"].labels
    lengths = [len(x) for x in ids]
    params = [p for p in s.model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    if variant != "bucket":  # optim_step pads with collate(..., bucket_limit=...); re-route its padding
        multiple = int(variant) if variant.isdigit() else None

        def collate(batch, pad_id, *, bucket_limit=None):
            out = B.collate(batch, pad_id)  # to the longest text
            extra = -out["input_ids"].shape[1] % multiple if multiple else 0
            return {k: torch.nn.functional.pad(v, (0, extra), value=pad_id if k == "input_ids" else 0) for k, v in out.items()}

        S.collate = collate
    if variant == "fixed":
        long = [i for i, n in enumerate(lengths) if n == max(lengths)][: cfg.train.batch_size]
        batches = [long] * steps
    else:
        batches, epoch = [], 0
        while len(batches) < steps:
            batches += B.epoch_batches(lengths, cfg.train.batch_size, seed=0, epoch=epoch, group_by_length=True)
            epoch += 1
    pad_id = s.tokenizer.pad_token_id or 0
    s.model.train()
    t0, seen, marks = time.perf_counter(), [], {}
    for k, batch in enumerate(batches[:steps], 1):
        S.optim_step(s.model, [batch], ids, y, pad_id, s.device, s.dtype, optim, sched, scaler, params,
                     cfg.train.max_grad_norm, bucket_limit=s.positions)
        seen.append(rss_mb())
        if k in MARKS:
            marks[k] = round(seen[-1])
    return {"variant": variant, "steps": steps, "rss_mb_at_step": marks, "peak_mb": round(max(seen)),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        print("RESULT " + json.dumps(child(sys.argv[2], int(sys.argv[3]))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="dynamic,fixed,8,16,32,64,bucket")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    for variant in args.variants.split(","):
        proc = subprocess.run([sys.executable, __file__, "_child", variant, str(args.steps)], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{variant} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(line[7:])
        at = ", ".join(f"{k}: {v}" for k, v in r["rss_mb_at_step"].items())
        print(f"{variant:>8}: peak {r['peak_mb']} MB in {r['seconds']} s; RSS after step {at}", flush=True)


if __name__ == "__main__":
    main()
