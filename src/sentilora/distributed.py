"""Data-parallel training: the processes that torchrun or accelerate launch start, and what they share.

The launcher says in the environment how many processes there are and which one this is (WORLD_SIZE,
RANK, LOCAL_RANK from torchrun and `accelerate launch --multi_gpu`; mpirun's OMPI_COMM_WORLD_* or
PMI_* when accelerate starts CPU processes through it). With more than one, `process_group` joins
them (gloo for CPU tensors and object messages, NCCL for CUDA tensors), and the training loop uses
the few collectives of `Dist`. With one, nothing here touches torch.distributed: every method is a
pass-through and the run is exactly the one-process run.

Kept rather than accelerate's `PartialState` + `gather_object`/`broadcast_object_list`: it picks one
backend (NCCL alone on GPUs, MPI where torch has it) while the messages here need gloo beside NCCL,
and it has no counterpart of `on_main`/`everywhere` (one process's error raised on all of them).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from sentilora.errors import ConfigError, SentiloraError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Where each launcher puts (rank, world size, local rank): torchrun and accelerate's GPU launcher set
# the torch names, mpirun (accelerate's multi-CPU launcher) the MPI ones. Same order as accelerate.
_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")
_WORLD = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE")
_LOCAL = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"${name} is '{value}', not a whole number; is the launcher set up right?") from None
    return default


def env_rank() -> int:
    """This process's rank as the launcher set it (0 when there is no launcher)."""
    return _env_int(_RANK, 0)


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes, and the collectives training needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, seq: Sequence[T]) -> Sequence[T]:
        """This process's share of `seq`: items rank, rank + world, ... (all of it for one process)."""
        return seq[self.rank :: self.world_size] if self.enabled else seq

    # ---- collectives (no-ops for one process) ---------------------------------------------------

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every process (pickled; for small things such as configs and metrics)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def all_gather(self, obj: T) -> list[T]:
        """Every process's `obj`, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (decisions no process may take alone)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])  # a CPU tensor: it goes over gloo, whatever the training device
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite `tensors` with rank 0's values, in place."""
        if self.enabled:
            for t in tensors:
                torch.distributed.broadcast(t.data, src=0)

    def sum_grads(self, params: Sequence[torch.Tensor], extra: float = 0.0) -> float:
        """Sum the gradients of `params` over processes in place (one message), and `extra` with them.

        This is DistributedDataParallel's gradient all-reduce, done by hand. DDP arms its hooks in
        its wrapper's forward, and the frozen-prefix cache calls the model with modules swapped in,
        past any wrapper; LoRA's gradients are small (about 75k numbers for MiniLM), so DDP's
        overlap of communication with backward would buy nothing. DDP averages; here each process's
        loss is already divided by the texts of the whole step, so the sum is the one-process
        gradient, even when the processes' shares differ in size. A parameter without a gradient
        (a process that had no texts in this step) counts as zeros.
        """
        if not self.enabled:
            return extra
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [grads[0].new_tensor([extra], dtype=torch.float32)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            p.grad = g
            offset += g.numel()
        return float(flat[-1])

    # ---- agreeing on success or failure -------------------------------------------------------------

    def on_main(self, fn: Callable[[], T]) -> T:
        """`fn()` on rank 0 only (e.g. touching the run folder); its result, or its error, on every process."""
        if not self.enabled:
            return fn()
        result, error = _attempt(fn) if self.is_main else (None, None)
        message = self.broadcast((result, _describe(error, self.rank)) if self.is_main else None)
        if error is not None:
            raise error
        result, remote = message
        if remote is not None:
            raise _rebuild(remote)
        return result  # type: ignore[return-value]

    def everywhere(self, fn: Callable[[], T]) -> T:
        """`fn()` on every process, rank 0 first (downloads land in the cache once); if it fails on
        any process, every process raises that error, so none waits forever for the others.

        Loading and checking the input data goes through here: the same bad file fails the same way
        on every process, and the user sees one line (the CLI prints rank 0's).
        """
        if not self.enabled:
            return fn()
        result, error = _attempt(fn) if self.is_main else (None, None)
        remote = self.broadcast(_describe(error, self.rank) if self.is_main else None)
        if error is not None:
            raise error
        if remote is not None:
            raise _rebuild(remote)
        if not self.is_main:
            result, error = _attempt(fn)
        failures = self.all_gather(_describe(error, self.rank))
        if error is not None:
            raise error
        first = next((f for f in failures if f is not None), None)
        if first is not None:
            raise _rebuild(first)
        return result  # type: ignore[return-value]


SINGLE = Dist()  # one process, no process group


def _attempt(fn: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return fn(), None
    except BaseException as e:  # handed to the other processes, then raised here too
        return None, e


def _describe(error: BaseException | None, rank: int) -> tuple[int, str, str, bytes | None] | None:
    """A picklable account of an error, to raise the same error on the other processes."""
    if error is None:
        return None
    try:
        blob: bytes | None = pickle.dumps(error) if isinstance(error, SentiloraError) else None
    except Exception:  # pragma: no cover - an unpicklable project error
        blob = None
    return rank, type(error).__name__, f"process {rank} failed: {type(error).__name__}: {error}", blob


def _rebuild(remote: tuple[int, str, str, bytes | None]) -> BaseException:
    rank, name, message, blob = remote
    if blob is not None:  # a project error: the same one-line message on every process
        error = pickle.loads(blob)
        if rank:  # only another process failed: its input (a file on another machine) may differ
            try:
                error = type(error)(f"process {rank}: {error}")
            except Exception:  # pragma: no cover - a project error with another signature
                pass
        return error
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    return RuntimeError(message)


def training_device(device: torch.device, d: Dist) -> torch.device:
    """The device this process trains on: with several processes on CUDA, GPU number LOCAL_RANK."""
    if not d.enabled:
        return device
    if device.type == "mps":
        raise ConfigError("several training processes need CUDA GPUs or CPUs; Apple MPS runs one process. "
                          "Start sentilora train without torchrun, or use --train.device cpu.")
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if d.local_rank >= n:
            raise ConfigError(f"process {d.rank} has local rank {d.local_rank} but this machine shows {n} GPUs: "
                              f"start one process per GPU (torchrun --nproc_per_node {n}).")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group() -> Iterator[Dist]:
    """Join the training processes the launcher started (see the module docstring); leave on exit.

    An existing process group (a script that set one up itself, or an earlier run in this process) is
    used as it is. A group started here stays up for the life of the process and is torn down at exit:
    creating the default group a second time in one process (a script that calls train() twice under
    torchrun) can leave the new group's first collective waiting forever on gloo.
    """
    world = _env_int(_WORLD, 1)
    rank, local_rank = env_rank(), _env_int(_LOCAL, 0)
    if world <= 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and os.environ.get("MASTER_ADDR"):
            log.warning("accelerate launch --cpu started one process: it starts several CPU processes only through "
                        "mpirun (--mpirun_hostfile). Use torchrun --nproc_per_node N, or accelerate launch "
                        "--multi_gpu --num_processes N, for several processes on one machine.")
        yield Dist()
        return
    dist = torch.distributed
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # mpirun sets ranks but no rendezvous address
        os.environ.setdefault("MASTER_PORT", "29500")
        # One group, two transports: CPU tensors and pickled objects (configs, metrics, logits) go over
        # gloo, CUDA gradients over NCCL. The training device is known only once the config is read
        # (on resume it comes from the run folder, through this group), so both are set up.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        # torch.distributed.nn.functional takes `group.WORLD` as a default argument when it is first
        # imported (transformers imports it while loading a model). Imported after the group exists, it
        # keeps the group alive past destroy_process_group, so gloo's worker threads outlive the
        # interpreter and one that drops a finished collective's tensor during shutdown aborts the
        # process ("terminate called without an active exception"). Imported first, its defaults are None.
        importlib.import_module("torch.distributed.nn.functional")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        atexit.register(_leave)
    # The other processes log warnings and errors only: rank 0 speaks for the run.
    quiet = logging.getLogger("sentilora")
    level = quiet.level
    if rank > 0 and quiet.getEffectiveLevel() < logging.WARNING:
        quiet.setLevel(logging.WARNING)
    try:
        yield Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
        # Finish together: no process goes on (or exits and tears its connections down) while another
        # is still in the run (rank 0 writing the bundle).
        dist.barrier()
    finally:
        quiet.setLevel(level)


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
