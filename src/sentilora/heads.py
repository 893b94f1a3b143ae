"""What the classification head reads (--model.pooling) and how it starts (--model.head_init).

Pooling: 'cls' leaves the architecture's own head (BERT: the first token through its pretrained
pooler; DistilBERT: the first token); 'mean' feeds it the mean of all token states, padding
excluded, which is what sentence-transformers bases such as MiniLM were trained to produce. It is a
forward hook on the encoder, so every path that runs the model pools the same way.

Head init: 'prototypes' starts a one-Linear head as a nearest-class-mean classifier over what the
head reads, 'logistic' as a logistic regression fitted on it, so a tiny training set starts from a
sensible classifier rather than from noise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sentilora.batching import autocast, collate
from sentilora.errors import ConfigError
from sentilora.files import read_json_object

log = logging.getLogger(__name__)

PROTOTYPE_TEXTS = 2048  # training texts whose features start the head


# ---- pooling ---------------------------------------------------------------------------------


def resolve_pooling(path: str, pooling: str, *, revision: str | None = None) -> str:
    """'auto' -> 'mean' when the base at `path` (a folder or hub id) is a sentence-transformers model
    pooled by the mean (its 1_Pooling/config.json says so), else 'cls'. 'cls' and 'mean' pass through."""
    if pooling != "auto":
        return pooling
    folder = Path(path)
    if not folder.is_dir():  # a hub id: look in the local cache only (never a download for this)
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(path, "1_Pooling/config.json", revision=revision)
        except Exception:  # noqa: BLE001 - no cache, odd id: the architecture's own head
            found = None
        if not isinstance(found, str):
            return "cls"
        folder = Path(found).parent.parent
    try:
        settings = read_json_object(folder / "1_Pooling" / "config.json")
    except (OSError, ValueError):
        return "cls"
    return "mean" if settings.get("pooling_mode_mean_tokens") else "cls"


def set_pooling(model: nn.Module, pooling: str) -> None:
    """Make the head read the masked mean of the last hidden states ('mean'), or leave the
    architecture's first-token head as it is ('cls').

    Models with a pooler (BERT) get the mean in place of the pooler's output (its dense + tanh is
    skipped); models whose head reads the first token's state (DistilBERT) get the mean there.
    """
    if pooling == "cls":
        return
    if pooling != "mean":
        raise ConfigError(f"--model.pooling must be auto, cls or mean; got {pooling!r}.")
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    hf.base_model.register_forward_hook(_mean_pool, with_kwargs=True)


def _mean_pool(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    hidden = output[0]
    mask = kwargs.get("attention_mask")
    if mask is None:
        mean = hidden.mean(dim=1)
    else:
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if output.get("pooler_output") is not None:
        output["pooler_output"] = mean
    else:
        output["last_hidden_state"] = torch.cat([mean.unsqueeze(1), hidden[:, 1:]], dim=1)
    return output


# ---- head initialisation ----------------------------------------------------------------------


@contextlib.contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect what the classification head (`model.classifier`) reads during forward passes."""
    head = getattr(model, "classifier", None)
    if head is None:
        raise ConfigError("--train.contrastive_steps needs a model whose head is called 'classifier' "
                          "(BERT, DistilBERT and the like); set it to 0 for this one.")
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        hook.remove()


def init_head(model: nn.Module, ids: Sequence[Sequence[int]], labels: Sequence[int], *, how: str, pad_id: int,
              device: torch.device, dtype: torch.dtype | None, seed: int) -> None:
    """Start `model`'s head from what it reads for up to PROTOTYPE_TEXTS of the training texts (a
    seeded draw): 'prototypes' makes it a nearest-class-mean classifier (`centroid_head`), 'logistic'
    a logistic regression fitted on those features (`logistic_head`, SetFit's classifier). A head
    that is not one Linear layer is left as it is, with a log line."""
    head = getattr(model, "classifier", None)
    # Under PEFT the head is a wrapper around the trained copy (modules_to_save): write that copy.
    linear = head.modules_to_save[head.active_adapters[0]] if hasattr(head, "modules_to_save") else head
    if type(linear) is not nn.Linear:
        log.info("--model.head_init %s needs a one-layer head; this model's starts at random", how)
        return
    pick = np.random.default_rng(seed).permutation(len(ids))[:PROTOTYPE_TEXTS]
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), head_inputs(model) as features:
            for start in range(0, len(pick), 32):
                batch = collate([ids[i] for i in pick[start : start + 32]], pad_id)
                with autocast(device, dtype):
                    model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        model.train(was_training)
    x, y = torch.cat([f.float().cpu() for f in features]), [labels[i] for i in pick]
    if how == "logistic":
        logistic_head(linear, x, y, seed=seed)
        log.info("head started as a logistic regression on the features of %d training texts", len(pick))
    else:
        centroid_head(linear, x, y)
        log.info("head started from the class means of %d training texts", len(pick))


def logistic_head(head: nn.Linear, features: torch.Tensor, labels: Sequence[int], *, seed: int) -> None:
    """Set `head` to a logistic regression (scikit-learn's defaults, C=1) fitted on `features`
    divided by their mean norm, so the penalty means what it means on SetFit's unit-length embeddings.
    Two classes: the one weight vector is split +-1/2 between the rows, which gives the same
    probabilities under softmax. A class with no row in `labels` scores far below the others."""
    from sklearn.linear_model import LogisticRegression

    x, y = features.double().numpy(), np.asarray(list(labels))
    scale = float(np.linalg.norm(x, axis=1).mean()) or 1.0
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x / scale, y)
    coef, bias = clf.coef_ / scale, clf.intercept_
    if len(clf.classes_) == 2:
        coef, bias = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    weight = torch.zeros(head.weight.shape, dtype=torch.float64)
    full_bias = torch.full(head.bias.shape, float(bias.min()) - 10.0, dtype=torch.float64)
    rows = torch.as_tensor(clf.classes_.astype(np.int64))
    weight[rows], full_bias[rows] = torch.as_tensor(coef), torch.as_tensor(bias)
    _set(head, weight, full_bias)


def centroid_head(head: nn.Linear, features: torch.Tensor, labels: Sequence[int]) -> None:
    """Set `head` to score each class by the direction from the centre of the class means to that
    class's mean; the bias makes the centre score 0, one scale sets the spread of the scores to 2.
    A class with no row in `labels` scores 0."""
    x, y = features.float(), torch.as_tensor(list(labels))
    present = [c for c in range(head.out_features) if (y == c).any()]
    means = torch.stack([x[y == c].mean(0) for c in present])
    centre = means.mean(0)
    directions = torch.nn.functional.normalize(means - centre, dim=1)
    scale = 2.0 / ((x - centre) @ directions.T).std().clamp(min=1e-6)
    weight, bias = torch.zeros(head.weight.shape), torch.zeros(head.bias.shape)
    weight[present] = scale * directions
    bias[present] = -(weight[present] @ centre)
    _set(head, weight, bias)


def _set(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy CPU-computed parameters into `head`, wherever it lives (a GPU) and in its dtype."""
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
