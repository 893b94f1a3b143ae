"""The training loop: LoRA fine-tuning with per-epoch validation, early stopping and resume.

One loop, written out rather than delegated to `transformers.Trainer`, so that batching, precision
and checkpoints are ours to control and resuming is exact: the batch order of every epoch is a pure
function of (seed, epoch), and a checkpoint stores the trainable weights, the optimiser, the
scheduler and the torch RNG state, so an interrupted run continues with the same per-step losses.

The same loop runs data-parallel under torchrun or accelerate launch (`sentilora.distributed`):
every process builds the same global batches and trains on its share of each, so the run does not
depend on how the global batch is split across processes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax

from sentilora import distributed as D
from sentilora import model as M
from sentilora.batching import autocast, collate, epoch_batches, length_sorted_batches, pick_device, pick_dtype
from sentilora.bundle import Manifest, save_bundle
from sentilora.config import Config
from sentilora.data import load_data
from sentilora.errors import SentiloraError
from sentilora.files import atomic_write_text
from sentilora.metrics import compute_metrics
from sentilora.model import num_layers
from sentilora.predict import predict_logits
from sentilora.prefix import FrozenPrefix
from sentilora.tokens import encode, position_limit

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
StepHook = Callable[[int, float], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0


# ---- the loop --------------------------------------------------------------------------------


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: StepHook | None = None,
    snapshot_minutes: Sequence[float] = (),
) -> TrainResult:
    """Fine-tune `cfg.model.name` with LoRA on `cfg.data` and write a run bundle to `out_dir`.

    `snapshot_minutes` (e.g. ``(15, 30)``) also saves the model as it is at those minutes of
    training to ``out_dir/snapshots/<N>min/``, a loadable bundle (learning curves against time).

    Under torchrun or accelerate launch every process calls this with the same arguments and they
    train one model together (see `sentilora.distributed`): each step, every process takes its share
    of a global batch of ``processes x --train.batch_size`` texts and the gradients are summed, so
    N processes at batch size B see the same batches, and take the same steps, as one process at
    batch size N x B (up to dropout, which each process draws for itself). Rank 0 alone writes the
    run folder; every process returns the same result.
    """
    with D.process_group() as dd:
        return _train(cfg, Path(out_dir), dd, resume=resume, progress=progress, on_step=on_step,
                      snapshot_minutes=snapshot_minutes)


@dataclass
class _Setup:
    """What the run is built from; everything in it can fail on user input."""

    device: torch.device
    dtype: torch.dtype | None
    data: Any
    tokenizer: Any
    model: Any
    heads: list[str]
    targets: list[str]
    fingerprint: str
    positions: int  # tokens the encoder takes per text
    enc: dict[str, list[list[int]]]
    prefix: FrozenPrefix | None


def _setup(cfg: Config, dd: D.Dist) -> _Setup:
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = D.training_device(pick_device(t.device), dd)
    dtype = pick_dtype(t.precision, device)
    torch.manual_seed(t.seed)
    data = load_data(cfg.data, need=("train", "validation"))
    tokenizer = M.load_tokenizer(cfg.model.name, revision=cfg.model.revision)
    base, new_weights = M.load_base_model(cfg.model.name, data.label_names, revision=cfg.model.revision)
    heads = M.head_modules(base, new_weights)
    targets = M.target_modules(base, cfg.lora.target_modules)
    fp = M.fingerprint(base)
    torch.manual_seed(t.seed)  # the head's init above consumed RNG in a model-dependent way
    model = M.add_lora(base, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=targets,
                       heads=heads, top_layers=cfg.lora.layers)
    model.to(device)
    positions = position_limit(base, tokenizer)
    for flag, n in (("--model.max_length", cfg.model.max_length), ("--model.predict_max_length", cfg.model.predict_max_length)):
        if n is not None and n > positions:
            raise SentiloraError(f"{flag} {n} is more than {cfg.model.name} takes ({positions} tokens per text); use {positions} or less.")
    enc = {s: encode(tokenizer, data.splits[s].texts, max_length=cfg.model.max_length, truncation=cfg.model.truncation) for s in ("train", "validation")}
    prefix = None
    if cfg.lora.layers is not None and t.cache_prefix and cfg.lora.layers < num_layers(model):
        prefix = FrozenPrefix(model, cfg.lora.layers)
    return _Setup(device, dtype, data, tokenizer, model, heads, targets, fp, positions, enc, prefix)


def _open_run_dir(out_dir: Path, cfg: Config, *, resume: bool, world_size: int) -> Config:
    """Check `out_dir` before anything is written; on resume, the run's own config."""
    ckpt_dir = out_dir / CHECKPOINT
    if resume:
        if not (ckpt_dir / "state.pt").is_file():
            raise SentiloraError(
                f"{out_dir}: nothing to resume (no {CHECKPOINT}/state.pt). Start a new run without --resume."
            )
        saved = json.loads(torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=True)["state"])
        before = saved.get("world_size", 1)
        if before != world_size:
            how = ("sentilora train without a launcher" if before == 1 else
                   f"e.g. torchrun --nproc_per_node {before} -m sentilora train")
            raise SentiloraError(
                f"{out_dir} was trained by {before} process{'es' * (before > 1)} and this run has {world_size}; "
                f"resume it with {before} ({how} --out {out_dir} --resume): the batches and the "
                "learning-rate schedule depend on the number of processes.")
        return Config.from_yaml(out_dir / "config.yaml")
    if out_dir.exists() and any(out_dir.iterdir()):
        hint = "add --resume to continue it" if ckpt_dir.is_dir() else "choose a new --out folder or delete it"
        raise SentiloraError(f"{out_dir}: folder exists and is not empty; {hint}.")
    return cfg


def _train(cfg: Config, out_dir: Path, dd: D.Dist, *, resume: bool, progress: bool, on_step: StepHook | None,
           snapshot_minutes: Sequence[float]) -> TrainResult:
    ckpt_dir = out_dir / CHECKPOINT
    # Only rank 0 reads and writes the run folder (on several machines it need not be shared); the
    # others get what it found, or its error, through the process group.
    cfg = dd.on_main(lambda: _open_run_dir(out_dir, cfg, resume=resume, world_size=dd.world_size))
    # Everything that can fail on user input happens before the run folder is created, on every
    # process alike, so bad data stops all of them with the same one-line error.
    setup = dd.everywhere(lambda: _setup(cfg, dd))
    t, model, device, dtype, enc, prefix = cfg.train, setup.model, setup.device, setup.dtype, setup.enc, setup.prefix
    train_ids, train_y = enc["train"], setup.data.splits["train"].labels
    lengths = [len(x) for x in train_ids]
    pad_id = setup.tokenizer.pad_token_id if setup.tokenizer.pad_token_id is not None else 0
    show = progress and dd.is_main

    # --train.batch_size is per process: a step takes a global batch of world x batch_size texts and
    # deals it out (see _optim_step), so steps per epoch and the schedule follow the global batch.
    global_batch = t.batch_size * dd.world_size
    steps_per_epoch = math.ceil(math.ceil(len(train_ids) / global_batch) / t.grad_accum)
    total_steps = steps_per_epoch * t.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    dd.broadcast_tensors(params)  # the same seed gives the same init everywhere; this makes sure of it
    if dd.rank:  # rank 0 keeps the one-process stream; the others get their own dropout masks
        torch.manual_seed(int(np.random.SeedSequence([t.seed, dd.rank]).generate_state(1)[0]))
    optim = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    # fp16 gradients underflow without loss scaling; for bf16/fp32 the scaler is a pass-through.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    warmup = int(t.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )

    state = _State(world_size=dd.world_size)
    if resume:
        state = _load_checkpoint(ckpt_dir, model, optim, sched, scaler, dd)
        log.info("resuming %s at step %d (epoch %d)", out_dir, state.step, state.epoch + 1)
    elif dd.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
        (out_dir / "train_log.jsonl").write_text("")

    manifest = Manifest(
        kind="adapter",
        base_model=cfg.model.name,
        base_revision=cfg.model.revision,
        base_fingerprint=setup.fingerprint,
        label_names=list(setup.data.label_names),
        head_modules=setup.heads,
        target_modules=setup.targets,
        max_length=cfg.model.max_length,
        truncation=cfg.model.truncation,
        predict_max_length=cfg.model.predict_max_length or setup.positions,
        positions=setup.positions,
    )
    n_trainable = sum(p.numel() for p in params)
    log.info("training %s params (%d trainable) on %s, %s", cfg.model.name, n_trainable, device, dtype or "fp32")
    if dd.enabled:
        log.info("%d processes, %d texts per process per batch: global batch %d", dd.world_size, t.batch_size, global_batch)

    t0, seconds_before = time.perf_counter(), state.train_seconds  # the cache is part of training time
    cache: dict[str, list[torch.Tensor]] = {}
    if prefix is not None:
        t_cache = time.perf_counter()
        # Every process caches every training text (any of them can fall in its share of a batch)
        # and only its own share of the validation texts (see _validate).
        for split, texts in (("train", train_ids), ("validation", dd.mine(enc["validation"]))):
            cbar = _Progress(len(texts), enabled=show, label=f"cache {split}")
            cache[split] = prefix.compute(texts, pad_id=pad_id, device=device, dtype=dtype, progress=cbar.advance)
            cbar.close()
        mb = sum(h.numel() * h.element_size() for v in cache.values() for h in v) / 2**20
        log.info("cached the %d frozen layers' outputs for %d texts: %.0f MB in RAM%s, %.1f s",
                 len(prefix.lower), sum(map(len, cache.values())), mb, " per process" if dd.enabled else "",
                 time.perf_counter() - t_cache)

    bar = _Progress(len(train_ids) * t.epochs, enabled=show)
    bar.advance(min(len(train_ids) * t.epochs, state.step * global_batch * t.grad_accum), timed=False)
    snapshots = sorted(m for m in snapshot_minutes if m * 60 >= seconds_before) if dd.is_main else []

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t0

    try:
        for epoch in range(state.epoch, t.epochs):
            if state.stopped:
                break
            batches = epoch_batches(lengths, global_batch, seed=t.seed, epoch=epoch, group_by_length=t.group_by_length)
            groups = [batches[i : i + t.grad_accum] for i in range(0, len(batches), t.grad_accum)]
            done_in_epoch = state.step - epoch * steps_per_epoch
            model.train()
            for group in groups[done_in_epoch:]:
                loss = _optim_step(model, group, train_ids, train_y, pad_id, device, dtype, optim, sched, scaler, params,
                                   t.max_grad_norm, prefix=prefix, hidden=cache.get("train"), dd=dd)
                state.step += 1
                if dd.is_main:
                    with open(out_dir / "train_log.jsonl", "a") as f:
                        f.write(json.dumps({"step": state.step, "epoch": epoch + 1, "loss": loss, "lr": sched.get_last_lr()[0]}) + "\n")
                bar.advance(sum(len(b) for b in group), loss=loss, epoch=epoch + 1)
                if on_step is not None:
                    on_step(state.step, loss)
                while snapshots and elapsed() >= snapshots[0] * 60:
                    _snapshot(model, setup.tokenizer, manifest, out_dir / "snapshots" / f"{snapshots.pop(0):g}min", cfg, state.step, elapsed())
                # Clocks differ a little between processes: they stop together when any is out of time.
                if t.max_minutes and dd.any(elapsed() >= t.max_minutes * 60):
                    state.stopped = True
                    log.info("time budget of %g minutes reached at step %d; validating and stopping", t.max_minutes, state.step)
                    break
                if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step % steps_per_epoch:
                    state.train_seconds = seconds_before + time.perf_counter() - t0
                    _save_checkpoint(ckpt_dir, model, optim, sched, scaler, state, dd)

            metrics = _validate(model, enc["validation"], setup.data.splits["validation"].labels, pad_id, device, dtype, cfg,
                                prefix=prefix, hidden=cache.get("validation"), dd=dd)
            collapsed = metrics.pop("collapsed")
            metrics["epoch"] = epoch + 1
            metrics["step"] = state.step
            state.history.append(metrics)
            log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
            if collapsed and dd.is_main:
                log.warning(
                    "epoch %d: the model gives every validation text the same output (loss %.4f, chance level): "
                    "training has collapsed. Lower --train.lr (now %g) or put LoRA on fewer modules.",
                    epoch + 1, metrics["loss"], t.lr)
            # Every process holds rank 0's metrics, so all of them take the same decisions below.
            if state.best is None or _better(metrics, state.best, t.select_metric):
                state.best = metrics
                state.bad_epochs = 0
                if dd.is_main:
                    ckpt_dir.mkdir(exist_ok=True)
                    _save_tensors(ckpt_dir / "best.safetensors", M.trainable_state(model))
            else:
                state.bad_epochs += 1
                if t.early_stopping_patience and state.bad_epochs >= t.early_stopping_patience:
                    state.stopped = True
            state.epoch = epoch + 1
            state.train_seconds = elapsed()
            _save_checkpoint(ckpt_dir, model, optim, sched, scaler, state, dd)
            if state.stopped and state.bad_epochs:
                log.info("early stopping after epoch %d (no gain for %d epochs)", epoch + 1, state.bad_epochs)
    except BaseException:
        if dd.is_main and (ckpt_dir / "state.pt").is_file():
            log.warning("run stopped; `sentilora train --out %s --resume` continues from its last checkpoint", out_dir)
        raise
    finally:
        bar.close()
    state.train_seconds = seconds_before + time.perf_counter() - t0
    assert state.best is not None
    history = {"best_epoch": state.best["epoch"], "select_metric": t.select_metric, "epochs": state.history,
               "steps": state.step, "train_samples": len(train_ids) * len(state.history),
               "train_seconds": round(state.train_seconds, 2), "trainable_params": n_trainable,
               "device": str(device), "precision": str(dtype or "fp32").replace("torch.", ""),
               "world_size": dd.world_size}

    def write_bundle() -> None:
        # The bundle holds the best epoch, not the last.
        M.load_trainable_state(model, _load_tensors(ckpt_dir / "best.safetensors"))
        atomic_write_text(out_dir / "history.json", json.dumps(history, indent=2) + "\n")
        save_bundle(model, setup.tokenizer, manifest, out_dir)
        shutil.rmtree(ckpt_dir)

    dd.on_main(write_bundle)  # the other processes wait for it: the launcher ends when the bundle is complete
    return TrainResult(out_dir, state.best["epoch"], state.best, state.history, state.step, state.train_seconds)


def _snapshot(model, tokenizer, manifest, folder: Path, cfg: Config, step: int, seconds: float) -> None:
    """The model as it is now (not the best epoch) as a loadable bundle."""
    save_bundle(model, tokenizer, manifest, folder)
    atomic_write_text(folder / "config.yaml", cfg.to_yaml())
    atomic_write_text(folder / "history.json", json.dumps({"step": step, "train_seconds": round(seconds, 2)}) + "\n")
    log.info("snapshot after %.1f minutes (step %d) -> %s", seconds / 60, step, folder)


def _optim_step(model, group, ids, labels, pad_id, device, dtype, optim, sched, scaler, params, max_norm,
                prefix: FrozenPrefix | None = None, hidden: list[torch.Tensor] | None = None,
                dd: D.Dist = D.SINGLE) -> float:
    """One optimiser step over `group` (grad_accum global batches); returns the step's mean loss.

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
        batch = {k: v.to(device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
        y = torch.tensor([labels[i] for i in idx], device=device)
        with autocast(device, dtype):
            if prefix is not None and hidden is not None:
                logits = prefix.forward([hidden[i] for i in idx], batch)
            else:
                logits = model(**batch).logits
        # Loss in fp32, weighted by batch share so accumulation equals one big batch.
        loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum") / n
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


def _validate(model, ids, labels, pad_id, device, dtype, cfg: Config,
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
        raise SentiloraError(
            "training diverged: the model's outputs on the validation texts are NaN or infinite. "
            f"Lower --train.lr (now {cfg.train.lr:g}), or train with --train.precision fp32."
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


def _better(new: dict[str, float], old: dict[str, float], metric: str) -> bool:
    """Is epoch `new` better than the best so far? A tie on accuracy/F1 goes to the lower loss: on a
    small validation split ties are common, and keeping the earlier, less trained epoch cost 9 points
    of test accuracy in one measured run (bench/results/train_imdb-p1.json, "no length grouping")."""
    if metric == "loss":
        return new["loss"] < old["loss"]
    return new[metric] > old[metric] or (new[metric] == old[metric] and new["loss"] < old["loss"])


# ---- checkpoints -----------------------------------------------------------------------------


@dataclass
class _State:
    step: int = 0
    epoch: int = 0  # epochs fully completed
    best: dict[str, Any] | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of the loop, per-epoch validation included
    stopped: bool = False  # early stopping fired
    world_size: int = 1  # processes that trained it; a resume needs as many (older checkpoints: 1)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _rng_state() -> dict[str, Any]:
    return {"rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _save_checkpoint(folder: Path, model, optim, sched, scaler, state: _State, dd: D.Dist = D.SINGLE) -> None:
    # Weights, optimiser and schedule are the same on every process; the random state (dropout) is
    # not, so rank 0 stores every process's, each to be restored by its own process.
    rngs = dd.all_gather(_rng_state())
    if not dd.is_main:
        return
    folder.mkdir(exist_ok=True)
    _save_tensors(folder / "weights.safetensors", M.trainable_state(model))
    blob = {
        "optimizer": optim.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        **rngs[0],
        "state": json.dumps(state.__dict__),
    }
    if dd.enabled:
        blob["rank_rng"] = rngs
    tmp = folder / ".state.pt.tmp"
    torch.save(blob, tmp)
    tmp.replace(folder / "state.pt")  # the state file is written last: it marks the checkpoint complete


def _load_checkpoint(folder: Path, model, optim, sched, scaler, dd: D.Dist = D.SINGLE) -> _State:
    def read() -> dict[str, Any]:
        blob = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        blob["weights"] = _load_tensors(folder / "weights.safetensors")
        # Drop log lines written after the checkpoint so the log matches an uninterrupted run.
        step = json.loads(blob["state"])["step"]
        log_path = folder.parent / "train_log.jsonl"
        lines = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in lines))
        return blob

    blob = dd.on_main(read)  # rank 0 reads the run folder and sends the checkpoint to the others
    M.load_trainable_state(model, blob["weights"])
    optim.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    if blob["scaler"]:
        scaler.load_state_dict(blob["scaler"])
    rng = blob["rank_rng"][dd.rank] if dd.enabled else blob
    torch.set_rng_state(rng["rng"])
    if rng["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda_rng"])
    return _State(**json.loads(blob["state"]))


class _Progress:
    """Progress over training samples with samples/s, loss and ETA: a rich bar on a terminal,
    a log line every 30 s otherwise (CI logs, nohup)."""

    def __init__(self, total: int, *, enabled: bool, label: str = "train") -> None:
        from rich.console import Console

        self.enabled, self.total, self.done, self.seen, self.label = enabled, total, 0, 0, label
        self.t0 = self.last_log = time.perf_counter()
        self.fields: dict[str, Any] = {"epoch": 1, "loss": "-", "rate": "-"}
        self.bar = None
        if not enabled or not Console(stderr=True).is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(f"[bold]{label}[/]" + (" epoch {task.fields[epoch]}" if label == "train" else "")),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} samples/s"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, **self.fields)

    def advance(self, n: int, *, loss: float | None = None, epoch: int | None = None, timed: bool = True) -> None:
        if not self.enabled:
            return
        self.seen += n
        if timed:  # work restored from a checkpoint is not counted in the rate
            self.done += n
        now = time.perf_counter()
        rate = self.done / max(1e-9, now - self.t0)
        self.fields["rate"] = f"{rate:6.1f}"
        if loss is not None:
            self.fields["loss"] = f"{loss:.4f}"
        if epoch is not None:
            self.fields["epoch"] = epoch
        if self.bar is not None:
            self.bar.update(self.task, advance=n, **self.fields)
        elif now - self.last_log >= 30 and rate > 0:
            self.last_log = now
            eta = (self.total - self.seen) / rate
            log.info("%s epoch %s: %d/%d samples, %.1f samples/s, loss %s, ETA %dm%02ds", self.label,
                     self.fields["epoch"], self.seen, self.total, rate, self.fields["loss"], eta // 60, eta % 60)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
