"""Resumable checkpoints of a training run, each one whole or not there at all.

A checkpoint is one folder: the trainable weights, the optimiser, scheduler, loss-scaler and random
state with the loop's position (`RunState`), and the best epoch's weights so far. It is written
under a temporary name and renamed into place, and only then does ``checkpoint/latest`` (replaced
atomically) name it, so a kill at any moment leaves `latest` naming one complete, consistent
checkpoint (weights, optimiser and best weights saved at the same step):

    run/checkpoint/latest                  "step-00000012-1a2b3c"
    run/checkpoint/step-00000012-1a2b3c/   weights.safetensors  state.pt  best.safetensors

Older checkpoints and left-over temporary folders are removed once `latest` has moved on.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sentilora import distributed as D
from sentilora import model as M
from sentilora.files import atomic_path, atomic_write_text, read_jsonl, remove

CHECKPOINT = "checkpoint"
LATEST = "latest"
TRAIN_LOG = "train_log.jsonl"

Tensors = dict[str, torch.Tensor]


@dataclass
class RunState:
    """Where the training loop is; saved as JSON inside state.pt."""

    step: int = 0
    epoch: int = 0  # epochs fully completed
    best: dict[str, Any] | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of the loop, per-epoch validation included
    stopped: bool = False  # early stopping or the time budget fired
    world_size: int = 1  # processes that trained it; a resume needs as many (older checkpoints: 1)


def latest(run_dir: Path) -> Path | None:
    """The folder of the run's last complete checkpoint, or None."""
    root = run_dir / CHECKPOINT
    pointer = root / LATEST
    if pointer.is_file():
        return root / pointer.read_text(encoding="utf-8").strip()
    # A run interrupted before this layout kept its one checkpoint's files in checkpoint/ itself.
    return root if (root / "state.pt").is_file() else None


def saved_state(folder: Path) -> RunState:
    """The loop position stored in a checkpoint folder (without loading tensors into a model)."""
    return RunState(**json.loads(_read_blob(folder)["state"]))


def save(run_dir: Path, model, optim, sched, scaler, state: RunState, best: Tensors | None,
         dd: D.Dist = D.SINGLE) -> None:
    """Write a new checkpoint (rank 0; every process must call it) and make it the latest."""
    # Weights, optimiser and schedule are the same on every process; the random state (dropout) is
    # not, so rank 0 stores every process's, each to be restored by its own process.
    rngs = dd.all_gather(_rng_state())
    if not dd.is_main:
        return
    root = run_dir / CHECKPOINT
    name = f"step-{state.step:08d}-{uuid.uuid4().hex[:6]}"  # unique: never an existing folder
    blob = {
        "optimizer": optim.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        **rngs[0],
        "state": json.dumps(state.__dict__),
    }
    if dd.enabled:
        blob["rank_rng"] = rngs
    with atomic_path(root / name) as tmp:
        tmp.mkdir()
        save_tensors(tmp / "weights.safetensors", M.trainable_state(model))
        torch.save(blob, tmp / "state.pt")
        if best is not None:
            save_tensors(tmp / "best.safetensors", best)
    atomic_write_text(root / LATEST, name + "\n")  # the commit point
    for old in root.iterdir():
        if old.name not in (LATEST, name):
            remove(old)


def load(run_dir: Path, model, optim, sched, scaler, dd: D.Dist = D.SINGLE) -> tuple[RunState, Tensors | None]:
    """Restore the latest checkpoint into model, optimiser, scheduler, scaler and the random state.

    Returns the loop state and the best weights so far (rank 0 only; None elsewhere or before the
    first validation). Also cuts train_log.jsonl back to the checkpoint's step.
    """

    def read() -> dict[str, Any]:
        folder = latest(run_dir)
        assert folder is not None  # checked before setup, by the caller
        blob = _read_blob(folder)
        blob["weights"] = load_tensors(folder / "weights.safetensors")
        best = folder / "best.safetensors"
        blob["best"] = load_tensors(best) if best.is_file() else None
        truncate_log(run_dir / TRAIN_LOG, json.loads(blob["state"])["step"])
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
    return RunState(**json.loads(blob["state"])), blob["best"] if dd.is_main else None


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after `step` (and a line a kill cut short), so that the log of a
    resumed run matches an uninterrupted one."""
    kept = [r for r in read_jsonl(path) if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def save_tensors(path: Path, tensors: Tensors) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> Tensors:
    from safetensors.torch import load_file

    return load_file(str(path))


def _read_blob(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    return {"rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
