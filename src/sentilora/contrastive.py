"""A SetFit-style contrastive stage before classification (--train.contrastive_steps).

With a few dozen labels per class, cross-entropy through a fresh head learns slowly and unevenly
from draw to draw. SetFit (Tunstall et al., 2022) first fine-tunes the encoder on pairs of texts,
pulling texts of one class together and pushing other classes apart, and only then fits a
classifier on the embeddings. This stage does the same to the LoRA weights:

- each step draws --train.batch_size pairs of training texts, half of one class and half of two
  (`draw_pairs`);
- both texts go through the model, and what the classification head reads is their embedding
  (the mean-pooled state under --model.pooling mean); a text drawn twice in one step goes through once;
- the loss is SetFit's: the squared error between the pair's cosine similarity and 1 (one class)
  or 0 (two classes).

Afterwards the head is fitted as SetFit fits its classifier, a logistic regression on the new
embeddings (`heads.init_head`; class means under --model.head_init prototypes), and ordinary
training follows for --train.epochs, without the --train.min_steps floor: on validation at 16
labels per class that beat 200 ordinary steps after the stage (bench/results/recipes-validation.json).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from sentilora.batching import autocast, collate
from sentilora.errors import ConfigError
from sentilora.heads import head_inputs

log = logging.getLogger(__name__)

# --train.contrastive_steps unset: for a small training set the stage draws AUTO_PAIRS_PER_TEXT pairs
# per training text, AUTO_MIN_STEPS steps at least (README: 'Which setting for which data';
# bench/results/recipes-validation.json: at 16 per class, 50 steps beat 100 on SST-2 (32 texts) and
# 100 beat 200 on SST-5 (80 texts), both with the logistic head). Long reviews too: on P3 (IMDB by
# stars, 4 classes) validation 0.428 against 0.370 without the stage, on IMDB 0.673 against 0.671.
AUTO_PAIRS_PER_TEXT = 20
AUTO_MIN_STEPS = 50
AUTO_BELOW = 40  # texts in the smallest class: on at 16 per class (measured), off at 64


def small_classes(labels: Sequence[int]) -> bool:
    """Whether the smallest of two or more classes has fewer than AUTO_BELOW texts: where the stage runs when unset."""
    counts = np.bincount(np.asarray(labels, dtype=int))
    counts = counts[counts > 0]
    return len(counts) >= 2 and int(counts.min()) < AUTO_BELOW


def auto_steps(labels: Sequence[int], pairs_per_step: int) -> int:
    """The stage's length when --train.contrastive_steps is unset: for `small_classes`, enough steps of
    `pairs_per_step` pairs for AUTO_PAIRS_PER_TEXT pairs per text (AUTO_MIN_STEPS at least); else 0."""
    if not small_classes(labels):
        return 0
    return max(AUTO_MIN_STEPS, round(AUTO_PAIRS_PER_TEXT * len(labels) / pairs_per_step))


def draw_pairs(labels: Sequence[int], n: int, rng: np.random.Generator, *,
               neighbour: float = 0.0) -> list[tuple[int, int, float]]:
    """`n` pairs (i, j, target): even positions one class (target 1.0), odd positions two (0.0).

    `neighbour` > 0 is for ordered classes (--train.contrastive_ordinal): two classes next to each
    other get that target, and it falls linearly to 0 for the two ends of the scale.
    A class with one text pairs it with itself; with one class there are no negative pairs and
    every pair is positive (the caller refuses that case).
    """
    y = np.asarray(labels)
    members = {int(c): np.flatnonzero(y == c) for c in np.unique(y)}
    outside = {c: np.flatnonzero(y != c) for c in members}
    classes = int(y.max()) + 1  # the scale's length, for ordinal_target
    pairs = []
    for k in range(n):
        i = int(rng.integers(len(y)))
        same = members[int(y[i])]
        if k % 2 == 0 or len(members) == 1:
            others = same[same != i]
            j = int(rng.choice(others)) if len(others) else i
            pairs.append((i, j, 1.0))
        else:
            j = int(rng.choice(outside[int(y[i])]))
            pairs.append((i, j, ordinal_target(abs(int(y[i]) - int(y[j])), classes, neighbour)))
    return pairs


def ordinal_target(distance: int, classes: int, neighbour: float) -> float:
    """The similarity target of two classes `distance` apart on a scale of `classes` (0 for SetFit's
    unordered classes): `neighbour` for neighbours, down to 0 for the two ends."""
    if neighbour <= 0 or classes < 3:
        return 0.0
    return neighbour * max(0, classes - 1 - distance) / (classes - 2)


def contrastive_stage(
    model: nn.Module,
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    steps: int,
    pairs_per_step: int,
    lr: float,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None,
    seed: int,
    max_grad_norm: float = 1.0,
    on_step: Callable[[int, float], None] | None = None,
    bucket_limit: int | None = None,
    neighbour: float = 0.0,
) -> float:
    """Train `model`'s trainable weights for `steps` steps on text pairs; returns the last 10 steps'
    mean loss. Its own AdamW and linear warm-up (10%) and decay, so the main schedule is untouched.
    `bucket_limit` pads batches as training does (`batching.collate`); `neighbour`: see `draw_pairs`."""
    if len(set(labels)) < 2:
        raise ConfigError("--train.contrastive_steps needs at least two classes in the training data.")
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.to(device).train()
    losses: list[float] = []
    try:
        for step in range(steps):
            pairs = draw_pairs(labels, pairs_per_step, rng, neighbour=neighbour)
            order = [i for i, _, _ in pairs] + [j for _, j, _ in pairs]
            # Each distinct text goes through the model once a step: 16 pairs drawn from 36 texts
            # hold about 21 distinct ones, not 32: SST-2's 50-step stage took 20-21 s instead of 28-30 s
            # (AMD EPYC, fp32), with the same loss to 5 decimals.
            distinct, where = np.unique(order, return_inverse=True)
            batch = {k: v.to(device) for k, v in collate([ids[i] for i in distinct], pad_id, bucket_limit=bucket_limit).items()}
            target = torch.tensor([t for _, _, t in pairs], device=device)
            with head_inputs(model) as seen, autocast(device, dtype):
                model(**batch)
            emb = seen[0].float()[torch.as_tensor(where, device=device)]
            cos = nn.functional.cosine_similarity(emb[: len(pairs)], emb[len(pairs) :], dim=-1)
            loss = nn.functional.mse_loss(cos, target)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, losses[-1])
    finally:
        model.train(was_training)
    tail = float(np.mean(losses[-10:]))
    log.info("contrastive stage: %d steps of %d pairs, loss %.4f -> %.4f", steps, pairs_per_step, losses[0], tail)
    return tail
