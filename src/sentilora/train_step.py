"""One optimiser step and one validation pass, on this process's share of a global batch.

The numerical core of the training loop (`sentilora.train`), apart from its bookkeeping: with
several processes each works on rows rank, rank + N, ... and the results are summed or gathered so
that every process ends up with what one process would have computed (`sentilora.distributed`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax

from sentilora import distributed as D
from sentilora.batching import autocast, collate, length_sorted_batches
from sentilora.config import Config
from sentilora.errors import SentiloraError
from sentilora.metrics import compute_metrics
from sentilora.predict import predict_logits
from sentilora.prefix import FrozenPrefix


def optim_step(model, group, ids, labels, pad_id, device, dtype, optim, sched, scaler, params, max_norm,
                prefix: FrozenPrefix | None = None, hidden: list[torch.Tensor] | None = None,
                dd: D.Dist = D.SINGLE, bucket_limit: int | None = None, targets: torch.Tensor | None = None) -> float:
    """One optimiser step over `group` (grad_accum global batches); returns the step's mean loss.
    `targets` (classes x classes, on `device`), if given, replaces each label by its row: a soft target
    distribution (`ordinal_targets`).
    With `bucket_limit` (the model's position limit) batches are padded to bucket widths
    (`batching.bucket_width`: steady memory from step to step).

    With several processes each takes rows rank, rank + N, ... of every batch. Batches are cut from
    a length-sorted order, so the shares are of near-equal length and no process waits long for the
    others; a process whose share is empty (a last batch shorter than N) adds zero gradients. Each
    loss is divided by the texts of the whole step on all processes, and the gradients are summed
    across processes: the step is the one a single process would take on the same batches.
    """
    n = sum(len(b) for b in group)  # texts in this step, over all processes
    total = 0.0
    for idx in map(dd.mine, group):
        if not idx:
            continue
        batch = {k: v.to(device) for k, v in collate([ids[i] for i in idx], pad_id, bucket_limit=bucket_limit).items()}
        y = torch.tensor([labels[i] for i in idx], device=device)
        with autocast(device, dtype):
            if prefix is not None and hidden is not None:
                logits = prefix.forward([hidden[i] for i in idx], batch)
            else:
                logits = model(**batch).logits
        # Loss in fp32, weighted by batch share so accumulation equals one big batch.
        goal = y if targets is None else targets[y]
        loss = torch.nn.functional.cross_entropy(logits.float(), goal, reduction="sum") / n
        scaler.scale(loss).backward()
        total += loss.item()
    # Before unscaling and clipping, so every process clips and steps on the same summed gradient.
    total = dd.sum_grads(params, total)
    scaler.unscale_(optim)
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optim)
    scaler.update()
    sched.step()
    optim.zero_grad(set_to_none=True)
    return total


def ordinal_targets(classes: int, smoothing: float) -> torch.Tensor | None:
    """Soft targets for ordered classes (--train.ordinal_smoothing): the true class keeps 1 - smoothing,
    the rest goes to its neighbours one step away (split between two, all of it to the one neighbour
    of an end class). None when off."""
    if not smoothing or classes < 3:
        return None
    out = torch.zeros(classes, classes)
    for c in range(classes):
        near = [k for k in (c - 1, c + 1) if 0 <= k < classes]
        out[c, c] = 1.0 - smoothing
        out[c, near] = smoothing / len(near)
    return out


def validate(model, ids, labels, pad_id, device, dtype, cfg: Config,
              prefix: FrozenPrefix | None = None, hidden: list[torch.Tensor] | None = None,
              dd: D.Dist = D.SINGLE) -> dict[str, float]:
    """Validation metrics (and a `collapsed` flag). With several processes each scores its share of
    `ids` (rows rank, rank + N, ...; `hidden` holds that share's cached states), rank 0 gathers the
    logits and computes the metrics, and every process gets rank 0's numbers (or its error), so the
    best-epoch and early-stopping decisions cannot differ between processes."""
    mine = dd.mine(ids)
    if not mine:  # fewer validation texts than processes
        logits = np.zeros((0, model.config.num_labels), dtype=np.float32)
    elif prefix is not None and hidden is not None:
        logits = _prefix_logits(model, prefix, hidden, mine, pad_id, device, dtype, cfg.eval.batch_size)
    else:
        logits = predict_logits(model, mine, pad_id=pad_id, batch_size=cfg.eval.batch_size, device=device, dtype=dtype)
    if dd.enabled:
        parts = dd.all_gather(logits)
        logits = np.zeros((len(ids), parts[0].shape[1]), dtype=parts[0].dtype)
        for rank, part in enumerate(parts):
            logits[rank :: dd.world_size] = part
    return dd.on_main(lambda: _metrics(logits, labels, cfg))


def _metrics(logits: np.ndarray, labels, cfg: Config) -> dict[str, float]:
    if not np.isfinite(logits).all():
        now = f" (now {cfg.train.lr:g})" if cfg.train.lr is not None else ""
        raise SentiloraError(
            "training diverged: the model's outputs on the validation texts are NaN or infinite. "
            f"Lower --train.lr{now}, or train with --train.precision fp32."
        )
    m = compute_metrics(np.asarray(labels), softmax(logits, axis=1), n_classes=logits.shape[1])
    keep = ("accuracy", "f1", "loss")
    out = {k: float(m[k]) for k in keep if k in m}
    out["collapsed"] = bool(len(logits) > 1 and float(np.ptp(logits, axis=0).max()) < 1e-3)
    return out


def _prefix_logits(model, prefix: FrozenPrefix, hidden, ids, pad_id, device, dtype, batch_size: int) -> np.ndarray:
    """Validation logits through the top layers only, from the cached frozen-layer outputs."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    try:
        with torch.inference_mode():
            for idx in length_sorted_batches([len(s) for s in ids], batch_size, 8192):
                batch = {k: v.to(device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
                with autocast(device, dtype):
                    out[idx] = prefix.forward([hidden[i] for i in idx], batch).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def better(new: dict[str, float], old: dict[str, float], metric: str) -> bool:
    """Is epoch `new` better than the best so far? A tie on accuracy/F1 goes to the lower loss: on a
    small validation split ties are common, and keeping the earlier, less trained epoch cost 9 points
    of test accuracy in one measured run (bench/results/train_imdb-p1.json, "no length grouping")."""
    if metric == "loss":
        return new["loss"] < old["loss"]
    return new[metric] > old[metric] or (new[metric] == old[metric] and new["loss"] < old["loss"])
