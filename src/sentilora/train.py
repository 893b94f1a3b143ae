"""The training loop: LoRA fine-tuning with per-epoch validation, early stopping and resume.

One loop, written out rather than delegated to `transformers.Trainer`, so that batching, precision
and checkpoints are ours to control and resuming is exact: the batch order of every epoch is a pure
function of (seed, epoch), and a checkpoint (`sentilora.checkpoint`) stores the trainable weights,
the optimiser, the scheduler and the torch RNG state, so an interrupted run continues with the same
per-step losses.

The same loop runs data-parallel under torchrun or accelerate launch (`sentilora.distributed`):
every process builds the same global batches and trains on its share of each, so the run does not
depend on how the global batch is split across processes.

About 600 lines: the `Trainer` keeps setup, the loop, validation, checkpoints and the time budget
side by side, and the runs of several models (--train.soup, --train.ensemble) come last (`_combine`);
the step maths is `train_step.py`, checkpoints `checkpoint.py`, the LR plan `schedule.py`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sentilora import checkpoint as C
from sentilora import distributed as D
from sentilora import heads as H
from sentilora import model as M
from sentilora import recipe as R
from sentilora import train_step as S
from sentilora.baseline import BLEND_FILE, BLEND_WEIGHTS, blend, choose_weight, fit_baseline, log_loss
from sentilora.batching import epoch_batches, pick_device, pick_dtype
from sentilora.bundle import MANIFEST, Manifest, average_adapters, load_bundle, save_bundle
from sentilora.config import Config, TrainConfig
from sentilora.contrastive import auto_steps, contrastive_stage
from sentilora.data import load_data, with_class_name_texts
from sentilora.errors import SentiloraError
from sentilora.files import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_new_folder,
    first_line,
    read_json_object,
    remove,
)
from sentilora.model import num_layers
from sentilora.predict import Classifier
from sentilora.prefix import FrozenPrefix
from sentilora.progress import Progress
from sentilora.schedule import LinearSchedule, steps_that_fit
from sentilora.tokens import cut, encode, position_limit, special_tokens, tokenize

__all__ = ["LinearSchedule", "TrainResult", "epoch_batches", "train"]  # epoch_batches lives in batching; re-exported
_better, _validate = S.better, S.validate  # their names before train_step.py; tests use them

log = logging.getLogger(__name__)

StepHook = Callable[[int, float], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    models: int = 1  # --train.soup / --train.ensemble: models combined into the bundle
    combined: str = ""  # how: "soup" (weights averaged) or "ensemble" (probabilities averaged)
    blend: dict[str, Any] | None = None  # --train.baseline_blend: the weight and validation figures (history.json)


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

    With --train.soup N or --train.ensemble N the first model trains in `out_dir` as above, the others
    in ``out_dir/members/seed-<seed>/``, and `out_dir` ends up holding their average or naming them all
    (`_combine`); snapshots are of the first model.

    Under torchrun or accelerate launch every process calls this with the same arguments and they
    train one model together (see `sentilora.distributed`): each step, every process takes its share
    of a global batch of ``processes x --train.batch_size`` texts and the gradients are summed, so
    N processes at batch size B see the same batches, and take the same steps, as one process at
    batch size N x B (up to dropout, which each process draws for itself). Rank 0 alone writes the
    run folder; every process returns the same result.
    """
    out_dir = Path(out_dir)
    with D.process_group() as dd:
        show = progress and dd.is_main
        unblended = _blend_pending(out_dir) if resume else None
        if unblended is not None:  # trained and combined; stopped before the TF-IDF blend was fitted
            return _blend(unblended, _finished(out_dir), dd)
        pending = _combine_pending(out_dir) if resume else None
        if pending is not None:  # the first model is done; the others go on below
            cfg = pending
        else:
            trainer = Trainer(cfg, out_dir, dd, resume=resume, show=show, on_step=on_step)
            result = trainer.run(snapshot_minutes)
            cfg = trainer.cfg
            del trainer  # its model and data: the other models load their own
            if models(cfg.train) == 1:
                return _blend(cfg, result, dd)
        return _blend(cfg, _combine(cfg, out_dir, dd, resume=resume, show=show, on_step=on_step), dd)


# ---- setup -----------------------------------------------------------------------------------


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
    pooling: str  # "cls" or "mean" ('auto' resolved)
    cfg: Config  # the run's config with the data-dependent settings filled in (sentilora.recipe)
    recipe: R.Recipe


def _setup(cfg: Config, dd: D.Dist) -> _Setup:
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = D.training_device(pick_device(t.device), dd)
    dtype = pick_dtype(t.precision, device)
    torch.manual_seed(t.seed)
    data = load_data(cfg.data, need=("train", "validation"))
    if dd.is_main:
        _warn_if_small(data)
    if t.class_name_texts is None:  # decided on the user's own labels, before the texts join them (sentilora.recipe)
        t = replace(t, class_name_texts=R.class_name_texts(data.splits["train"].labels, data.label_names, t.contrastive_steps))
        cfg = replace(cfg, train=t)
    if t.class_name_texts:
        data.splits["train"] = with_class_name_texts(data.splits["train"], data.label_names, t.class_name_texts)
        if dd.is_main:
            log.info("%d training texts per class made from the class names, e.g. %r (--train.class_name_texts; "
                     "0 leaves them out)", t.class_name_texts, data.splits["train"].texts[-1])
    tokenizer = M.load_tokenizer(cfg.model.name, revision=cfg.model.revision)
    pooling = H.resolve_pooling(M.resolve_model(cfg.model.name), cfg.model.pooling, revision=cfg.model.revision)
    base, new_weights = M.load_base_model(cfg.model.name, data.label_names, revision=cfg.model.revision, pooling=pooling)
    heads = M.head_modules(base, new_weights)
    fp = M.fingerprint(base)
    torch.manual_seed(t.seed)  # the head's init above consumed RNG in a model-dependent way
    if cfg.model.dropout is not None:
        M.set_dropout(base, cfg.model.dropout)
    attention = t.attention if t.attention != "auto" else ("eager" if device.type == "cpu" else None)
    if attention and hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(attention)  # bench/README.md: where a training step's time goes
    positions = position_limit(base, tokenizer)
    for flag, n in (("--model.max_length", cfg.model.max_length), ("--model.predict_max_length", cfg.model.predict_max_length)):
        if n is not None and n > positions:
            raise SentiloraError(f"{flag} {n} is more than {cfg.model.name} takes ({positions} tokens per text); use {positions} or less.")
    whole = {s: tokenize(tokenizer, data.splits[s].texts) for s in ("train", "validation")}
    specials = sum(len(x) for x in special_tokens(tokenizer))
    lengths = [len(x) + specials for x in whole["train"]]  # whole, as the recipe rules read them
    length_unset = cfg.model.max_length is None
    cfg, recipe = R.resolve(cfg, lengths, data.label_names, has_presets=M.has_target_presets(base),
                            positions=positions, labels=data.splits["train"].labels,
                            held_out=len(data.splits["validation"].labels))
    enc = {s: cut(tokenizer, ids, max_length=cfg.model.max_length, truncation=cfg.model.truncation) for s, ids in whole.items()}
    del whole
    if length_unset and dd.is_main and lengths:
        log.info("training reads up to %d tokens per text (%d texts, median length %d tokens; --preset auto, "
                 "--model.max_length overrides)", cfg.model.max_length, len(lengths), int(np.median(lengths)))
    targets = M.target_modules(base, cfg.lora.target_modules)
    if cfg.model.head_init != "random":
        H.init_head(base, enc["train"], data.splits["train"].labels, how=cfg.model.head_init,
                    pad_id=tokenizer.pad_token_id or 0, device=device, dtype=dtype, seed=t.seed)
    model = M.add_lora(base, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=targets,
                       heads=heads, top_layers=cfg.lora.layers, dora=cfg.lora.dora)
    model.to(device)
    if dtype is not None:
        M.cast_frozen_linears(model, dtype)
    prefix = None
    if cfg.lora.layers is not None and t.cache_prefix and cfg.lora.layers < num_layers(model):
        prefix = FrozenPrefix(model, cfg.lora.layers)
    return _Setup(device, dtype, data, tokenizer, model, heads, targets, fp, positions, enc, prefix, pooling, cfg, recipe)


SMALL_CLASS = 200  # training texts per class below which a fine-tuned model is unreliable
SMALL_VALIDATION = 50


def _warn_if_small(data: Any) -> None:
    """Warn (never fail) when the training or validation split is too small to trust the result."""
    train, val = data.splits["train"], data.splits["validation"]
    counts = np.bincount(train.labels, minlength=len(data.label_names))
    present = np.flatnonzero(counts)  # a class absent from train has its own warning in load_data
    smallest = present[np.argmin(counts[present])]
    if counts[smallest] < SMALL_CLASS:
        log.warning(
            "only %d training texts of class %r, the smallest: expect an unreliable model. With MiniLM (bench/suite.py), "
            "16 labels per class gave 0.72 accuracy on short 2-class texts (sd 0.06 over draws; SetFit 0.69), "
            "0.36 on 5 classes (SetFit 0.34), 0.70 on IMDB reviews (SetFit 0.67) and 0.46 on IMDB by 4 star "
            "classes (SetFit 0.43); 64 per class 0.78 on the short texts and 0.80 on IMDB. "
            "Evaluate with `sentilora evaluate`, which shows a TF-IDF baseline beside the model; README: "
            "'Which setting for which data'.",
            counts[smallest], data.label_names[smallest])
    if 0 < len(val.labels) < SMALL_VALIDATION:
        log.warning("validation on %d texts: the best-epoch choice is noise", len(val.labels))


def _open_run_dir(out_dir: Path, cfg: Config, *, resume: bool, world_size: int) -> Config:
    """Check `out_dir` before anything is written; on resume, the run's own config."""
    if not resume:
        hint = "add --resume to continue it" if (out_dir / C.CHECKPOINT).is_dir() else "choose a new --out folder or delete it"
        check_new_folder(out_dir, hint=hint)
        return cfg
    folder = C.latest(out_dir)
    if folder is None and (out_dir / MANIFEST).is_file():  # a finished run keeps its bundle, not its checkpoints
        raise SentiloraError(f"{out_dir}: the run already finished (its bundle {MANIFEST} is there); nothing to resume. "
                             "Use it as it is (evaluate, predict, export), or train again into a new --out folder.")
    if folder is None:
        raise SentiloraError(f"{out_dir}: nothing to resume (no complete checkpoint in {C.CHECKPOINT}/). "
                             "Start a new run without --resume.")
    before = C.saved_state(folder).world_size
    if before != world_size:
        how = ("sentilora train without a launcher" if before == 1 else
               f"e.g. torchrun --nproc_per_node {before} -m sentilora train")
        raise SentiloraError(
            f"{out_dir} was trained by {before} process{'es' * (before > 1)} and this run has {world_size}; "
            f"resume it with {before} ({how} --out {out_dir} --resume): the batches and the "
            "learning-rate schedule depend on the number of processes.")
    return Config.from_yaml(out_dir / "config.yaml")


# ---- the loop --------------------------------------------------------------------------------


class Trainer:
    """One training run. `setup` builds model, data, optimiser and schedule from the config (or the
    run's checkpoint); `run` goes epoch by epoch: `step` takes one optimiser step, `validate` scores
    the epoch and decides the best epoch and early stopping, `checkpoint` saves where the run is."""

    def __init__(self, cfg: Config, out_dir: Path, dd: D.Dist, *, resume: bool, show: bool,
                 on_step: StepHook | None) -> None:
        self.out_dir, self.dd, self.show, self.on_step = out_dir, dd, show, on_step
        self.snapshots: list[float] = []
        self.setup(cfg, resume=resume)

    def setup(self, cfg: Config, *, resume: bool) -> None:
        dd, out_dir = self.dd, self.out_dir
        # Only rank 0 reads and writes the run folder (on several machines it need not be shared); the
        # others get what it found, or its error, through the process group.
        self.cfg = cfg = dd.on_main(lambda: _open_run_dir(out_dir, cfg, resume=resume, world_size=dd.world_size))
        # Everything that can fail on user input happens before the run folder is created, on every
        # process alike, so bad data stops all of them with the same one-line error.
        self.s = s = dd.everywhere(lambda: _setup(cfg, dd))
        epochs_given = cfg.train.epochs is not None  # before --preset auto fills in what the user left unset
        self.cfg = cfg = s.cfg
        self.t = t = cfg.train
        self.train_ids, self.train_y = s.enc["train"], s.data.splits["train"].labels
        self.targets = S.ordinal_targets(len(s.data.label_names), t.ordinal_smoothing)
        if self.targets is not None:
            self.targets = self.targets.to(s.device)  # once, not on every batch
        if t.ordinal_smoothing and dd.is_main and not resume:
            if self.targets is None:
                log.warning("--train.ordinal_smoothing needs 3 or more ordered classes; with %d it is ignored",
                            len(s.data.label_names))
            else:
                log.info("ordered classes (%s): each training target gives %g to the neighbouring classes "
                         "(--train.ordinal_smoothing 0 turns it off)", " < ".join(s.data.label_names), t.ordinal_smoothing)
        self.lengths = [len(x) for x in self.train_ids]
        self.pad_id = s.tokenizer.pad_token_id if s.tokenizer.pad_token_id is not None else 0
        # --train.batch_size is per process: a step takes a global batch of world x batch_size texts and
        # deals it out (train_step.optim_step), so steps per epoch and the schedule follow the global batch.
        self.global_batch = t.batch_size * dd.world_size
        self.max_minutes = _budget(t)  # a --train.soup's or --train.ensemble's models share the budget
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_ids) / self.global_batch) / t.grad_accum)
        self.contrastive_steps = (t.contrastive_steps if t.contrastive_steps is not None
                                  else auto_steps(self.train_y, t.batch_size))
        if self.contrastive_steps and t.contrastive_steps is None and dd.is_main and not resume:
            log.info("few labels per class: a contrastive stage of %d steps first (--train.contrastive_steps 0 skips it)",
                     self.contrastive_steps)
        if t.contrastive_ordinal and dd.is_main and not resume:
            if len(s.data.label_names) < 3 or not self.contrastive_steps:
                log.warning("--train.contrastive_ordinal acts in a contrastive stage on 3 or more ordered classes; "
                            "with %d classes and %d stage steps it is ignored", len(s.data.label_names), self.contrastive_steps)
            else:
                log.info("ordered classes in the contrastive stage: neighbours pulled to similarity %g", t.contrastive_ordinal)
        if (t.ensemble or 1) > 1 and dd.is_main and not resume:
            log.info("%d models will be trained, seeds %d to %d, and their class probabilities averaged "
                     "(--train.ensemble %d; 1 trains one model)", t.ensemble, t.seed,
                     t.seed + t.ensemble - 1, t.ensemble)
        if s.recipe is R.MANY_SHORT and dd.is_main and not resume:
            log.info("%d short training texts (median %d tokens): %s (--preset auto; flags override each)",
                     len(self.train_ids), int(np.median(self.lengths)), R.describe(cfg))
        # A small training set runs more epochs, to take --train.min_steps optimiser steps at least; after a
        # contrastive stage the head starts fitted and --train.epochs are enough (sentilora.contrastive).
        floor = 0 if self.contrastive_steps else t.min_steps
        self.epochs = max(t.epochs, math.ceil(floor / self.steps_per_epoch))
        if self.epochs > t.epochs and dd.is_main and not resume:
            # a warning where it overrides an --train.epochs the user gave: their setting does not win here
            (log.warning if epochs_given else log.info)(
                "%d training texts make %d steps per epoch: %d epochs instead of %d, to take --train.min_steps %d "
                "(--train.min_steps 0 keeps --train.epochs as given)",
                len(self.train_ids), self.steps_per_epoch, self.epochs, t.epochs, t.min_steps)
        self.total_steps = total_steps = self.steps_per_epoch * self.epochs
        self.params = [p for p in s.model.parameters() if p.requires_grad]
        dd.broadcast_tensors(self.params)  # the same seed gives the same init everywhere; this makes sure of it
        if dd.rank:  # rank 0 keeps the one-process stream; the others get their own dropout masks
            torch.manual_seed(int(np.random.SeedSequence([t.seed, dd.rank]).generate_state(1)[0]))
        self.optim = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        # fp16 gradients underflow without loss scaling; for bf16/fp32 the scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(s.device.type, enabled=s.dtype == torch.float16)
        self.plan = LinearSchedule(int(t.warmup_ratio * total_steps), total_steps, t.warmup_ratio)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, self.plan)
        self.rate_from: tuple[int, float] | None = None  # (step, elapsed) where the step-rate clock started

        self.state, self.best_weights = C.RunState(world_size=dd.world_size), None
        if resume:
            self.state, self.best_weights = C.load(out_dir, s.model, self.optim, self.sched, self.scaler, dd)
            log.info("resuming %s at step %d (epoch %d)", out_dir, self.state.step, self.state.epoch + 1)
        elif dd.is_main:
            atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
            atomic_write_text(out_dir / C.TRAIN_LOG, "")

        self.manifest = Manifest(
            kind="adapter", base_model=cfg.model.name, base_revision=cfg.model.revision, base_fingerprint=s.fingerprint,
            label_names=list(s.data.label_names), head_modules=s.heads, target_modules=s.targets,
            max_length=cfg.model.max_length, truncation=cfg.model.truncation,
            predict_max_length=cfg.model.predict_max_length or s.positions, positions=s.positions, pooling=s.pooling,
        )
        self.n_trainable = sum(p.numel() for p in self.params)
        log.info("training %s params (%d trainable, %s pooling) on %s, %s", cfg.model.name, self.n_trainable, s.pooling,
                 s.device, s.dtype or "fp32")
        if dd.enabled:
            log.info("%d processes, %d texts per process per batch: global batch %d", dd.world_size, t.batch_size, self.global_batch)
        self.t0, self.seconds_before = time.perf_counter(), self.state.train_seconds  # the cache is part of training time
        self.cache = self._cache_prefix()

    def _cache_prefix(self) -> dict[str, list[torch.Tensor]]:
        s, dd = self.s, self.dd
        if s.prefix is None:
            return {}
        t_cache, cache = time.perf_counter(), {}
        # Every process caches every training text (any of them can fall in its share of a batch)
        # and only its own share of the validation texts (see train_step.validate).
        for split, texts in (("train", self.train_ids), ("validation", dd.mine(s.enc["validation"]))):
            with Progress(len(texts), f"cache {split}", unit="texts", enabled=self.show) as bar:
                cache[split] = s.prefix.compute(texts, pad_id=self.pad_id, device=s.device, dtype=s.dtype, progress=bar.advance)
        mb = sum(h.numel() * h.element_size() for v in cache.values() for h in v) / 2**20
        log.info("cached the %d frozen layers' outputs for %d texts: %.0f MB in RAM%s, %.1f s",
                 len(s.prefix.lower), sum(map(len, cache.values())), mb, " per process" if dd.enabled else "",
                 time.perf_counter() - t_cache)
        return cache

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def run(self, snapshot_minutes: Sequence[float] = ()) -> TrainResult:
        t, state, dd = self.t, self.state, self.dd
        total = len(self.train_ids) * self.epochs
        self.snapshots = sorted(m for m in snapshot_minutes if m * 60 >= self.seconds_before) if dd.is_main else []
        if self.contrastive_steps and state.step == 0:  # not again on --resume
            self.contrastive()
        with Progress(total, "train", enabled=self.show, epoch=min(state.epoch + 1, self.epochs), loss="-") as bar:
            bar.advance(min(total, state.step * self.global_batch * t.grad_accum), timed=False)
            try:
                for epoch in range(state.epoch, self.epochs):
                    if state.stopped:
                        break
                    batches = epoch_batches(self.lengths, self.global_batch, seed=t.seed, epoch=epoch,
                                            group_by_length=t.group_by_length)
                    groups = [batches[i : i + t.grad_accum] for i in range(0, len(batches), t.grad_accum)]
                    self.s.model.train()
                    for group in groups[state.step - epoch * self.steps_per_epoch :]:
                        if self.step(epoch, group, bar):
                            break
                    self.validate(epoch)
                    state.epoch = epoch + 1
                    state.train_seconds = self.elapsed()
                    self.checkpoint()
                    if state.stopped and state.bad_epochs:
                        log.info("early stopping after epoch %d (no gain for %d epochs)", epoch + 1, state.bad_epochs)
            except BaseException:
                if dd.is_main and C.latest(self.out_dir) is not None:
                    log.warning("run stopped; `sentilora train --out %s --resume` continues from its last checkpoint", self.out_dir)
                raise
        return self.finish()

    def contrastive(self) -> None:
        """The SetFit-style stage (sentilora.contrastive), then the head fitted on the new embeddings."""
        s, t, dd = self.s, self.t, self.dd
        with Progress(self.contrastive_steps, "pairs", unit="steps", enabled=self.show, loss="-") as bar:
            contrastive_stage(s.model, self.train_ids, self.train_y, steps=self.contrastive_steps,
                              pairs_per_step=t.batch_size, lr=t.lr, pad_id=self.pad_id, device=s.device, dtype=s.dtype,
                              seed=t.seed, max_grad_norm=t.max_grad_norm, on_step=lambda _, loss: bar.advance(1, loss=loss),
                              bucket_limit=s.positions, neighbour=t.contrastive_ordinal)
        how = "prototypes" if self.cfg.model.head_init == "prototypes" else "logistic"
        H.init_head(s.model, self.train_ids, self.train_y, how=how, pad_id=self.pad_id, device=s.device, dtype=s.dtype,
                    seed=t.seed)
        dd.broadcast_tensors(self.params)  # every process starts the main stage from rank 0's weights

    def step(self, epoch: int, group: list[list[int]], bar: Progress) -> bool:
        """One optimiser step and what follows it (log line, hook, snapshots, checkpoint); True when
        the time budget is spent."""
        s, t, state, dd = self.s, self.t, self.state, self.dd
        loss = S.optim_step(s.model, group, self.train_ids, self.train_y, self.pad_id, s.device, s.dtype, self.optim,
                            self.sched, self.scaler, self.params, t.max_grad_norm, prefix=s.prefix,
                            hidden=self.cache.get("train"), dd=dd, bucket_limit=s.positions, targets=self.targets)
        state.step += 1
        if dd.is_main:
            with open(self.out_dir / C.TRAIN_LOG, "a") as f:
                f.write(json.dumps({"step": state.step, "epoch": epoch + 1, "loss": loss, "lr": self.sched.get_last_lr()[0]}) + "\n")
        bar.advance(sum(len(b) for b in group), loss=loss, epoch=epoch + 1)
        if self.on_step is not None:
            self.on_step(state.step, loss)
        while self.snapshots and self.elapsed() >= self.snapshots[0] * 60:
            self.snapshot(self.snapshots.pop(0))
        if self.max_minutes:
            self._fit_schedule()
            # Clocks differ a little between processes: they stop together when any is out of time.
            out_of_time = dd.any(self.elapsed() >= self.max_minutes * 60)
            if out_of_time or self.total_steps > self.plan.total <= state.step:
                state.stopped = True
                log.info("%s at step %d; validating and stopping", "time budget of %g minutes reached" % self.max_minutes
                         if out_of_time else "learning-rate schedule fitted to the time budget ends", state.step)
                return True
        if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.step % self.steps_per_epoch:
            state.train_seconds = self.elapsed()
            self.checkpoint()
        return False

    def _fit_schedule(self) -> None:
        """Fit the LR schedule to the budget once the step rate is known (steps 5 to 25 of this
        process), and again every 20 steps at the average rate so far: the rate drifts (batches of
        long texts come in any order, the machine is shared), and a plan made on 20 steps of short
        texts once ended a run at half its LR. Step counts, not clocks, say when, so every process
        replans at the same step."""
        state = self.state
        if self.rate_from is None:
            if state.step >= 5 or state.step >= self.plan.total:
                self.rate_from = (state.step, self.elapsed())
            return
        first, since = self.rate_from
        if state.step - first < 20 or (state.step - first) % 20:
            return
        per_step = (self.elapsed() - since) / (state.step - first)
        left = self.max_minutes * 60 - self.elapsed()
        # Validation after each epoch is part of the budget: about a third of a training sample's time per text.
        val_s = len(self.s.enc["validation"]) * per_step / self.global_batch / 3
        fit = steps_that_fit(state.step, per_step=per_step, seconds_left=left, steps_per_epoch=self.steps_per_epoch,
                             validation_s=val_s)
        fit = self.dd.broadcast(fit)  # every process plans the same schedule
        first_plan = not self.plan.replanned
        before = self.plan.total
        self.plan.replan(state.step, fit)
        if first_plan and self.plan.total < before:
            log.info("%.2f s per step: %d of the %d planned steps fit in %g minutes (--train.max_minutes); the learning "
                     "rate now decays to 0 at step %d", per_step, self.plan.total, before, self.max_minutes, self.plan.total)
        elif abs(self.plan.total - before) > 0.05 * before:
            log.info("%.2f s per step on average so far: the learning rate now decays to 0 at step %d instead of %d",
                     per_step, self.plan.total, before)

    def validate(self, epoch: int) -> None:
        """Score the epoch on the validation split; keep its weights if best, count it if not. Without
        validation texts (a small training set, --data.min_held_out) every epoch replaces the last."""
        s, t, state, dd = self.s, self.t, self.state, self.dd
        metrics: dict[str, Any] = {}
        if s.enc["validation"]:
            metrics = S.validate(s.model, s.enc["validation"], s.data.splits["validation"].labels, self.pad_id, s.device,
                                 s.dtype, self.cfg, prefix=s.prefix, hidden=self.cache.get("validation"), dd=dd)
            log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
            if metrics.pop("collapsed") and dd.is_main:
                log.warning(
                    "epoch %d: the model gives every validation text the same output (loss %.4f, chance level): "
                    "training has collapsed. Lower --train.lr (now %g) or put LoRA on fewer modules.",
                    epoch + 1, metrics["loss"], t.lr)
        metrics["epoch"] = epoch + 1
        metrics["step"] = state.step
        state.history.append(metrics)
        # Every process holds rank 0's metrics, so all of them take the same decisions below.
        if state.best is None or not s.enc["validation"] or S.better(metrics, state.best, t.select_metric):
            state.best, state.bad_epochs = metrics, 0
            if dd.is_main:  # in RAM (LoRA and head: small) and in every checkpoint from now on
                self.best_weights = {k: v.cpu() for k, v in M.trainable_state(s.model).items()}
        else:
            state.bad_epochs += 1
            if t.early_stopping_patience and state.bad_epochs >= t.early_stopping_patience:
                state.stopped = True

    def checkpoint(self) -> None:
        C.save(self.out_dir, self.s.model, self.optim, self.sched, self.scaler, self.state, self.best_weights, self.dd)

    def snapshot(self, minutes: float) -> None:
        """The model as it is now (not the best epoch) as a loadable bundle in snapshots/<N>min/."""
        folder, seconds, step = self.out_dir / "snapshots" / f"{minutes:g}min", self.elapsed(), self.state.step
        remove(folder)  # left by a run that was then resumed from a checkpoint taken before it
        with atomic_path(folder) as tmp:  # the folder appears complete or not at all
            tmp.mkdir()
            save_bundle(self.s.model, self.s.tokenizer, self.manifest, tmp)
            (tmp / "config.yaml").write_text(self.cfg.to_yaml())
            (tmp / "history.json").write_text(json.dumps({"step": step, "train_seconds": round(seconds, 2)}) + "\n")
        log.info("snapshot after %.1f minutes (step %d) -> %s", seconds / 60, step, folder)

    def finish(self) -> TrainResult:
        """Write the bundle (rank 0; the others wait for it) and drop the checkpoint."""
        s, t, state, dd = self.s, self.t, self.state, self.dd
        state.train_seconds = self.elapsed()
        assert state.best is not None
        history = {"best_epoch": state.best["epoch"], "select_metric": t.select_metric, "epochs": state.history,
                   "steps": state.step, "train_samples": len(self.train_ids) * len(state.history),
                   "train_seconds": round(state.train_seconds, 2), "trainable_params": self.n_trainable,
                   "device": str(s.device), "precision": str(s.dtype or "fp32").replace("torch.", ""),
                   "world_size": dd.world_size, "recipe": s.recipe.name}

        def write_bundle() -> None:
            M.load_trainable_state(s.model, self.best_weights)  # the bundle holds the best epoch, not the last
            atomic_write_json(self.out_dir / "history.json", history)
            save_bundle(s.model, s.tokenizer, self.manifest, self.out_dir)
            remove(self.out_dir / C.CHECKPOINT)

        dd.on_main(write_bundle)  # the other processes wait for it: the launcher ends when the bundle is complete
        return TrainResult(self.out_dir, state.best["epoch"], state.best, state.history, state.step, state.train_seconds)


# ---- several models ---------------------------------------------------------------------------

# Models fine-tuned from one base on the same data and validation split, with different seeds (their LoRA
# init, head, dropout and batch order), then combined. --train.soup averages them weight by weight (a model
# soup, Wortsman et al. 2022): one model's size and speed. --train.ensemble keeps them all and averages their
# class probabilities: N times the prediction cost. bench/recipes.py's *-soup and *-ensemble groups and
# bench/ensemble_members.py measure what each gains and loses (README: 'Several models').
MEMBERS = "members"


def models(t: TrainConfig) -> int:
    """How many models the run trains (--train.soup or --train.ensemble; the config allows one of them)."""
    return max(t.soup, t.ensemble or 1)


def _trained(out_dir: Path) -> tuple[Config, set[str]] | None:
    """The run's config and the keys of its history.json, where `out_dir` holds a model whose training
    finished (no checkpoint left); else None."""
    history = out_dir / "history.json"
    if (out_dir / C.CHECKPOINT).is_dir() or not history.is_file() or not (out_dir / "config.yaml").is_file():
        return None
    return Config.from_yaml(out_dir / "config.yaml"), set(read_json_object(history))


def _combine_pending(out_dir: Path) -> Config | None:
    """The run's config, where `out_dir` holds a finished first model of several whose combination is not
    written yet; else None."""
    if (found := _trained(out_dir)) is None:
        return None
    cfg, done = found
    return cfg if models(cfg.train) > 1 and not {"soup", "ensemble"} & done else None


def _blend_pending(out_dir: Path) -> Config | None:
    """The run's config, where `out_dir` holds a finished bundle (its models combined) whose TF-IDF blend
    (--train.baseline_blend on) was not written yet; else None."""
    if (found := _trained(out_dir)) is None or not (out_dir / MANIFEST).is_file():
        return None
    cfg, done = found
    if cfg.train.baseline_blend != "on" or "baseline_blend" in done:
        return None
    return cfg if models(cfg.train) == 1 or {"soup", "ensemble"} & done else None


def _finished(out_dir: Path) -> TrainResult:
    """The TrainResult of the finished run in `out_dir`, from its history.json."""
    h = read_json_object(out_dir / "history.json")
    how = next((k for k in ("ensemble", "soup") if k in h), "")
    best = h["epochs"][h["best_epoch"] - 1]
    if not how:
        return TrainResult(out_dir, h["best_epoch"], best, h["epochs"], h["steps"], h["train_seconds"])
    members = h[how]["members"]
    steps = sum(read_json_object(out_dir / m["folder"] / "history.json")["steps"] for m in members)
    return TrainResult(out_dir, h["best_epoch"], h[how]["validation"] or best, h["epochs"], steps, h["train_seconds"],
                       len(members), how)


def _budget(t: TrainConfig) -> float | None:
    """Minutes of --train.max_minutes for one model: the whole run's, shared among its models."""
    return t.max_minutes / models(t) if t.max_minutes else None


def _combine(cfg: Config, out_dir: Path, dd: D.Dist, *, resume: bool, show: bool, on_step: StepHook | None) -> TrainResult:
    """Train the run's other models (after the first, in `out_dir`), each a run of its own in
    members/seed-N (resumable, loadable), then write their combination into `out_dir` and score it:
    their averaged adapter (--train.soup), or a manifest naming them all (--train.ensemble)."""
    t = cfg.train
    n, how = models(t), ("ensemble" if (t.ensemble or 1) > 1 else "soup")
    seeds = [t.seed + i for i in range(n)]
    folders = [out_dir / MEMBERS / f"seed-{seed}" for seed in seeds]
    dd.on_main(lambda: _keep_first(out_dir, folders[0]))
    share = replace(t, soup=1, ensemble=1, max_minutes=_budget(t))
    for i, (seed, folder) in enumerate(zip(seeds[1:], folders[1:]), 2):
        if (folder / MANIFEST).is_file():
            continue  # trained before a --resume (the manifest is the last file a finished run writes)
        log.info("model %d of %d (--train.%s), seed %d -> %s", i, n, how, seed, folder)
        member = replace(cfg, train=replace(share, seed=seed))
        again = resume and (folder / C.CHECKPOINT).is_dir()
        if not again:  # stopped before its first checkpoint: start it afresh
            dd.on_main(lambda: remove(folder))  # noqa: B023 (called at once)
        Trainer(member, folder, dd, resume=again, show=show, on_step=on_step).run()
    histories = [read_json_object(f / "history.json") for f in folders]

    def write() -> None:
        remove(out_dir / "adapter")  # member 0 keeps its copy; a --resume combines the members again
        if how == "soup":
            average_adapters(folders, out_dir / "adapter")
            return
        first = Manifest.read(folders[0])
        Manifest(**{**first.__dict__, "kind": "ensemble",
                    "members": [str(f.relative_to(out_dir)) for f in folders]}).save(out_dir)

    dd.on_main(write)
    metrics = _score(cfg, out_dir, dd)
    history = read_json_object(out_dir / "history.json")
    seconds = round(sum(h["train_seconds"] for h in histories), 2)
    members = [{"seed": seed, "folder": str(f.relative_to(out_dir)), "best": h["epochs"][h["best_epoch"] - 1],
                "train_seconds": h["train_seconds"]} for seed, f, h in zip(seeds, folders, histories)]
    history |= {"train_seconds": seconds, how: {"validation": metrics, "members": members}}
    dd.on_main(lambda: atomic_write_json(out_dir / "history.json", history))
    if metrics:
        each = ", ".join(f"{h['epochs'][h['best_epoch'] - 1].get(t.select_metric, float('nan')):.4f}" for h in histories)
        log.info("%s of %d models: validation %s %.4f (the models alone: %s)", how, n, t.select_metric,
                 metrics.get(t.select_metric, float("nan")), each)
    return TrainResult(out_dir, history["best_epoch"], metrics or history["epochs"][history["best_epoch"] - 1],
                       history["epochs"], sum(h["steps"] for h in histories), seconds, n, how)


def _keep_first(out_dir: Path, folder: Path) -> None:
    """Copy the first model's bundle (trained in `out_dir`) to `folder`, once."""
    if (folder / MANIFEST).is_file():
        return
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name in ("adapter", "tokenizer"):
            shutil.copytree(out_dir / name, tmp / name)
        for name in (MANIFEST, "config.yaml", "history.json", C.TRAIN_LOG):
            shutil.copy2(out_dir / name, tmp / name)


def _score(cfg: Config, out_dir: Path, dd: D.Dist) -> dict[str, Any]:
    """The bundle in `out_dir` scored on the run's validation split (empty without one)."""
    val = load_data(cfg.data, need=("validation",)).splits["validation"]
    if not len(val.labels):
        return {}
    model, tokenizer, _ = load_bundle(out_dir)
    device = D.training_device(pick_device(cfg.train.device), dd)
    ids = encode(tokenizer, val.texts, max_length=cfg.model.max_length, truncation=cfg.model.truncation)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    metrics = S.validate(model.to(device), ids, val.labels, pad_id, device, pick_dtype(cfg.train.precision, device), cfg, dd=dd)
    metrics.pop("collapsed", None)
    return metrics


# ---- the TF-IDF blend (--train.baseline_blend) --------------------------------------------------


def _blend(cfg: Config, result: TrainResult, dd: D.Dist) -> TrainResult:
    """With --train.baseline_blend on (resolved by --preset auto), fit the TF-IDF baseline on the training
    texts and mix it into the finished bundle at the weight with the lowest validation log-loss
    (`baseline.choose_weight`); at weight 0 the bundle stays as it was. Its figures go to history.json."""
    if cfg.train.baseline_blend != "on":
        return result
    data = load_data(cfg.data, need=("train", "validation"))
    if not data.splits["validation"].labels:
        if dd.is_main:
            log.warning("--train.baseline_blend on, but the run has no validation texts to choose the baseline's "
                        "weight on: the model is kept alone (set --data.min_held_out 0 to hold some out)")
        return result
    return replace(result, blend=dd.on_main(lambda: _fit_blend(cfg, data, result.run_dir)))


def _fit_blend(cfg: Config, data: Any, out_dir: Path) -> dict[str, Any]:
    train, val = data.splits["train"], data.splits["validation"]
    t0 = time.perf_counter()
    try:
        base = fit_baseline(train.texts, train.labels, n_classes=len(data.label_names), seed=cfg.train.seed)
    except ValueError as e:  # e.g. "empty vocabulary": no word of two or more letters in any text
        log.warning("TF-IDF baseline not mixed in (--train.baseline_blend): it cannot be fitted on these texts "
                    "(%s); the model is kept alone", first_line(e))
        return {"weight": 0.0, "error": first_line(e)}
    man = Manifest.read(out_dir)
    if man.baseline_weight:  # written by a run stopped before its history.json: the model alone is weighed again
        man.baseline_weight = 0.0
        man.save(out_dir)
    p_base = base.predict_proba(val.texts)
    p_model = Classifier.load(out_dir, device=cfg.train.device).predict_proba(val.texts)
    weight, losses = choose_weight(p_model, p_base, val.labels)
    y = np.asarray(val.labels)

    def scores(p: np.ndarray, loss: float) -> dict[str, float]:
        return {"accuracy": round(float((p.argmax(1) == y).mean()), 4), "loss": round(loss, 4)}

    info = {"weight": weight, "texts": len(y), "seconds": round(time.perf_counter() - t0, 1),
            "model": scores(p_model, losses[0]), "baseline": scores(p_base, log_loss(p_base, val.labels)),
            "blend": scores(blend(p_model, p_base, weight), min(losses)),
            "loss_by_weight": {f"{w:g}": round(v, 4) for w, v in zip(BLEND_WEIGHTS, losses)}}
    if weight:
        base.save(out_dir / BLEND_FILE)  # before the manifest names it: a bundle stopped in between stays whole
        man.baseline_weight = weight
        man.save(out_dir)
    history = read_json_object(out_dir / "history.json")
    atomic_write_json(out_dir / "history.json", history | {"baseline_blend": info})
    m, b = info["model"], info["blend"]
    if weight:
        log.info("TF-IDF baseline mixed in at weight %g (--train.baseline_blend): validation accuracy %.4f against "
                 "%.4f for the model alone, log-loss %.4f against %.4f (%d texts; %.1f s)", weight, b["accuracy"],
                 m["accuracy"], b["loss"], m["loss"], len(y), info["seconds"])
    else:
        log.info("TF-IDF baseline not mixed in (--train.baseline_blend): no weight lowered the validation log-loss "
                 "(%.4f alone; %d texts)", m["loss"], len(y))
    return info


class _CallableModule(types.ModuleType):
    """`from sentilora import train` finds this module (the import system binds a package's submodule
    to its name, so the package's lazy attribute returns the module too): calling the module calls
    `train`, so the README's `train(cfg, "runs/demo")` works however the names were imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
