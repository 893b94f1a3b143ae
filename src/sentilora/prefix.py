"""Frozen-prefix caching: compute the frozen lower encoder layers once, train through the top ones.

When LoRA sits only in the top k layers (``--lora.layers k``), the embeddings and the layers below
them never change during training, so their output for a given text is the same every epoch.
`FrozenPrefix.compute` runs them once (inference mode, no dropout) and keeps each text's hidden
states in RAM in bf16 (384 hidden x ~230 tokens x 2 bytes = ~180 kB per IMDB review at 256 tokens);
`FrozenPrefix.forward` then feeds a padded batch of those states straight into the top k layers and
the classification head. The model itself is untouched: the embeddings module and the layer list
are swapped only for the duration of one call.

The one behavioural difference from training the full stack: dropout in the frozen lower layers is
off (their outputs are computed once), which acts as a slightly weaker regulariser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sentilora.batching import autocast, collate, length_sorted_batches
from sentilora.errors import ConfigError
from sentilora.model import encoder_layers

STORE_DTYPE = torch.bfloat16


@contextlib.contextmanager
def _swap(parent: nn.Module, attr: str, new: nn.Module) -> Iterator[None]:
    old = parent._modules[attr]
    parent._modules[attr] = new
    try:
        yield
    finally:
        parent._modules[attr] = old


class _Feed(nn.Module):
    """Stands in for the embeddings module: returns the hidden states it was given."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.hidden


class FrozenPrefix:
    """The lower `len(layers) - top` layers of `model`, cached; see the module docstring."""

    def __init__(self, model: nn.Module, top: int) -> None:
        self.model = model
        self.backbone, self.parent, self.attr, layers = encoder_layers(model)
        if not 1 <= top < len(layers):
            raise ConfigError(f"--lora.layers must be between 1 and {len(layers) - 1} to cache a frozen prefix; got {top}.")
        self.lower = nn.ModuleList(list(layers[: len(layers) - top]))
        self.upper = nn.ModuleList(list(layers[len(layers) - top :]))

    @torch.inference_mode()
    def compute(
        self,
        ids: Sequence[Sequence[int]],
        *,
        pad_id: int,
        device: torch.device,
        dtype: torch.dtype | None,
        max_tokens: int = 8192,
        progress: object = None,
    ) -> list[torch.Tensor]:
        """Hidden states after the frozen layers, one [len, hidden] bf16 tensor per text (input order)."""
        was_training = self.model.training
        self.model.eval()
        out: list[torch.Tensor | None] = [None] * len(ids)
        try:
            with _swap(self.parent, self.attr, self.lower):
                for idx in length_sorted_batches([len(s) for s in ids], max_batch=64, max_tokens=max_tokens):
                    batch = {k: v.to(device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
                    with autocast(device, dtype):
                        hidden = self.backbone(**batch).last_hidden_state
                    for row, i in enumerate(idx):
                        out[i] = hidden[row, : len(ids[i])].to("cpu", STORE_DTYPE).clone()
                    if progress is not None:
                        progress(len(idx))
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def forward(self, hidden: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for a batch whose frozen-layer outputs are `hidden` (padded to `batch`'s width)."""
        width = batch["input_ids"].shape[1]
        device = batch["input_ids"].device
        padded = hidden[0].new_zeros(len(hidden), width, hidden[0].shape[-1])
        for row, h in enumerate(hidden):
            padded[row, : h.shape[0]] = h
        feed = _Feed(padded.to(device, torch.float32))
        with _swap(self.backbone, "embeddings", feed), _swap(self.parent, self.attr, self.upper):
            return self.model(**batch).logits
