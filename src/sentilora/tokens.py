"""Texts to token ids: the model's truncation (head+tail, left, right) and long-text windows.

`encode` tokenises without truncating, then cuts each text to `max_length` by the bundle's rule, so
one function gives training, prediction and the report the same ids for the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sentilora.errors import ConfigError, ModelLoadError


def encode(tokenizer: Any, texts: Sequence[str], *, max_length: int, truncation: str) -> list[list[int]]:
    """Token ids per text with special tokens, truncated to max_length by the given strategy."""
    return cut(tokenizer, tokenize(tokenizer, texts), max_length=max_length, truncation=truncation)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, whole and without special tokens: `cut` makes them what the model reads."""
    return tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if texts else []


def cut(tokenizer: Any, ids: Sequence[Sequence[int]], *, max_length: int, truncation: str) -> list[list[int]]:
    """`tokenize`'s ids with special tokens, truncated to max_length by the given strategy."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    return [prefix + [seq[i] for i in kept_positions(len(seq), budget, truncation)] + suffix for seq in ids]


def kept_positions(n: int, budget: int, truncation: str) -> list[int]:
    """Which of a text's `n` tokens (no special tokens) the model reads when `budget` fit."""
    if n <= budget:
        return list(range(n))
    if truncation == "right":
        return list(range(budget))
    if truncation == "left":
        return list(range(n - budget, n))
    head = budget // 4  # head_tail: the opening sets the topic, the ending holds the verdict (Sun et al. 2019)
    return list(range(head)) + list(range(n - (budget - head), n))


def position_limit(model: Any, tokenizer: Any = None) -> int:
    """Tokens the encoder can take in one text: its position embeddings, or less if its tokenizer says so."""
    config = model.config
    n = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer"):
        n -= (config.pad_token_id or 0) + 1  # positions start after the padding index
    declared = getattr(tokenizer, "model_max_length", None)
    return min(n, declared) if isinstance(declared, int) and 0 < declared < 1_000_000 else n


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] / [SEP], <s> / </s>, ...)."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    raise ModelLoadError("could not work out this tokenizer's special tokens; please report the model you used.")


def check_long_texts(long_texts: str) -> None:
    """Refuse a --long-texts value other than 'truncate' (the bundle's truncation) or 'chunk' (`window_positions`)."""
    if long_texts not in ("truncate", "chunk"):
        raise ConfigError(f"--long-texts must be truncate or chunk; got '{long_texts}'.")


def chunk_windows(ids: Sequence[int], prefix: list[int], suffix: list[int], max_length: int) -> list[list[int]]:
    """Split one over-long text into overlapping windows (`window_positions`), each with special tokens.

    Kept rather than a fast tokenizer's `return_overflowing_tokens` + `stride`: that leaves a short
    last window (the tail of the text read with little context), where this one ends the last window
    at the text's end so every window is full; and it works from ids already computed.
    """
    size = max_length - len(prefix) - len(suffix)
    return [prefix + [ids[i] for i in window] + suffix for window in window_positions(len(ids), size)]


def window_positions(n: int, size: int) -> list[range]:
    """Which of a text's `n` tokens each window reads, `size` at a time: a quarter overlap, and the
    last window ends at the text's end. A text that fits is one window."""
    if n <= size:
        return [range(n)]
    stride = max(1, size - size // 4)
    starts = list(range(0, n - size, stride)) + [n - size]
    return [range(s, s + size) for s in starts]
