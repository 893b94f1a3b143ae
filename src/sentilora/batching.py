"""How texts become batches and batches run: length sorting, padding, device and precision.

Pure helpers shared by training, the prediction engine and the frozen-prefix cache; no model code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from sentilora.errors import ConfigError


def length_sorted_batches(lengths: Sequence[int], max_batch: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Indices grouped longest-first, each batch under `max_tokens` padded tokens and `max_batch` rows."""
    order = np.argsort([-n for n in lengths], kind="stable").tolist()
    i = 0
    while i < len(order):
        width = max(1, lengths[order[i]])  # the batch's longest member comes first
        size = max_batch if max_tokens is None else max(1, min(max_batch, max_tokens // width))
        yield order[i : i + size]
        i += size


def epoch_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Batches of indices for one epoch; a pure function of its arguments (so resume is exact).

    With several processes these are the global batches (`batch_size` = processes x per-process
    batch size); every process computes all of them and trains on its share (`_optim_step`).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        # Sort within windows of 50 batches: near-uniform lengths per batch, still a random mix.
        window = batch_size * 50
        chunks = [order[i : i + window] for i in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort([-lengths[j] for j in c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def bucket_width(width: int) -> int:
    """The padded width of a training batch whose longest text has `width` tokens: `width` itself up
    to 64 tokens, the next multiple of 32 above.

    Training pads long batches to these few widths rather than to every possible one. With a new
    width in every batch, each step's activations (about 1 GB at 16 x 256 tokens) came in new sizes
    that glibc could not fit into the memory the step before had freed, and the process grew step
    after step (P1: 2.0 GB after 20 steps, 3.6 GB after 200, 3.9-4.6 GB for a whole run); with six
    widths the freed blocks fit the next batch and it stays flat (1.6-1.8 GB; a whole run 2.1-2.2 GB).
    The price: 3.7% more tokens on P1, 0.92x the samples/s (bench/README.md: memory). Batches of
    short texts are small whatever their width, and are left as they are.
    """
    return width if width <= 64 else -(-width // 32) * 32


def collate(batch: Sequence[Sequence[int]], pad_id: int, *, bucket_limit: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch of id lists to its longest member (dynamic padding), or, given `bucket_limit`
    (the model's position limit), to that length's `bucket_width` but never past the limit
    (training: steady memory).

    Kept rather than `tokenizer.pad`: the tensors are identical, but `pad` took 2.38 ms against
    0.96 ms for a 32 x 256-token batch (MiniLM tokenizer), warns on every fast tokenizer that
    `__call__` would be faster, and would need the tokenizer threaded into the frozen-prefix cache
    and the ONNX path, which only know the pad id.
    """
    width = max(len(s) for s in batch)
    if bucket_limit is not None:
        width = max(width, min(bucket_width(width), bucket_limit))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ---- device and precision ----------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--train.device cuda: no CUDA GPU is visible to torch. Use --train.device cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--train.device mps: Apple MPS is not available here. Use --train.device cpu or auto.")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX-512 BF16 / AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("--train.precision fp16 needs a CUDA GPU; on this device use bf16 or fp32.")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
