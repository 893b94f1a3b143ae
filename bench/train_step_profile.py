"""Where a training step's time goes, and what each lever does to it (issue: training at the CPU's limit).

Times optimiser steps of the P1 recipe (MiniLM, LoRA r8 on query/value, batch 16, IMDB reviews cut
to 256 tokens head+tail, length-grouped batches) through sentilora's own setup and step code, with
one lever changed per variant. Prints samples/s and achieved GFLOP/s per variant, and with
--profile the torch.profiler table of one variant. Exploration tool; the side-by-side accuracy and
speed figures come from bench/train_imdb.py.

    python bench/train_step_profile.py --variants base,bf16_base --steps 12
    python bench/train_step_profile.py --variants base --profile
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO / ".." / "shared" / "data" / "imdb" / "train.parquet"
FLOP_PER_TOKEN = 23e6  # MiniLM-L6 forward, per token (2 x 22M parameters, attention included roughly)


def build(variant: dict, n: int = 400):
    from sentilora import model as M
    from sentilora.batching import epoch_batches
    from sentilora.tokens import encode

    torch.manual_seed(0)
    df = pd.read_parquet(IMDB).sample(n, random_state=0)
    tok = M.load_tokenizer("minilm")
    base, new = M.load_base_model("minilm", ["negative", "positive"])
    if variant.get("attn"):
        base.set_attn_implementation(variant["attn"])
    if variant.get("no_dropout"):
        for mod in base.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    if variant.get("no_attn_dropout"):  # the dropout on attention probabilities only
        for name, mod in base.named_modules():
            if isinstance(mod, torch.nn.Dropout) and name.endswith(("attention.self.dropout", "attention.dropout")):
                mod.p = 0.0
    heads = M.head_modules(base, new)
    model = M.add_lora(base, r=8, alpha=16, dropout=variant.get("lora_dropout", 0.0 if variant.get("no_dropout") else 0.1),
                       targets=M.target_modules(base, None), heads=heads)
    if variant.get("bf16_base"):
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    ids = encode(tok, df["text"].tolist(), max_length=256, truncation="head_tail")
    labels = df["label"].tolist()
    batches = epoch_batches([len(x) for x in ids], 16, seed=0, epoch=0, group_by_length=True)
    return model, ids, labels, batches


def run(variant: dict, steps: int, profile: bool) -> dict:
    from sentilora.batching import autocast, collate

    torch.set_num_threads(variant.get("threads") or torch.get_num_threads())
    model, ids, labels, batches = build(variant)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=2e-3)
    dtype = None if variant.get("fp32") else torch.bfloat16
    dev = torch.device("cpu")
    fwd = model
    if variant.get("compile"):
        fwd = torch.compile(model, dynamic=True)

    def step(b: list[int]) -> torch.Tensor:
        batch = collate([ids[i] for i in b], 0)
        y = torch.tensor([labels[i] for i in b])
        with autocast(dev, dtype):
            logits = fwd(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss.detach()

    for b in batches[:3]:  # warm-up (and compilation)
        step(b)
    chosen = batches[3 : 3 + steps]
    tokens = sum(len(ids[i]) for b in chosen for i in b)
    samples = sum(len(b) for b in chosen)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU], record_shapes=False) as p:
            for b in chosen[:4]:
                step(b)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    t0 = time.perf_counter()
    for b in chosen:
        step(b)
    dt = time.perf_counter() - t0
    return {"samples_per_s": round(samples / dt, 2), "tokens_per_s": round(tokens / dt, 1),
            "gflops": round(3 * FLOP_PER_TOKEN * tokens / dt / 1e9, 1), "seconds": round(dt, 2), "steps": len(chosen)}


VARIANTS = {
    "base": {},
    "fp32": {"fp32": True},
    "bf16_base": {"bf16_base": True},
    "sdpa": {"attn": "sdpa"},
    "eager": {"attn": "eager"},
    "no_dropout": {"no_dropout": True},
    "no_attn_dropout": {"no_attn_dropout": True},
    "bf16_noattn": {"bf16_base": True, "no_attn_dropout": True},
    "bf16_nodrop": {"bf16_base": True, "no_dropout": True},
    "bf16_nodrop_eager": {"bf16_base": True, "no_dropout": True, "attn": "eager"},
    "nodrop_keep_lora": {"no_dropout": True, "lora_dropout": 0.1},
    "bf16_nodrop_keep_lora": {"bf16_base": True, "no_dropout": True, "lora_dropout": 0.1},
    "compile": {"compile": True},
    "bf16_sdpa_nodrop": {"bf16_base": True, "attn": "sdpa", "no_dropout": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    for name in args.variants.split(","):
        spec = json.loads(name) if name.startswith("{") else VARIANTS[name]
        print(name, json.dumps(run(spec, args.steps, args.profile)), flush=True)


if __name__ == "__main__":
    main()
