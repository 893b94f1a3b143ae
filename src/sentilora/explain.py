"""Which words drove a prediction: integrated gradients on the input embeddings, summed per word.

For one text the model reads its token ids under the bundle's truncation. The baseline is the same
sequence with every text token replaced by padding (the special tokens and the attention mask
kept). Integrated gradients (Sundararajan et al., 2017) average the gradient of the target class's
logit at `steps` points on the straight line from the baseline's embeddings to the text's (the
midpoint rule; the points go through the model in batches) and multiply it by the difference of the
embeddings. That gives one score per token, and the scores add up to the change of the logit from
baseline to text (the completeness axiom; `Explanation.gap` is how far the finite sum is from it).
'grad_x_input' is the one-pass shortcut: the gradient at the text alone, times the same difference.

Token scores are summed per word (the tokenizer's own word split), with character offsets into the
text as given. Words that the truncation cut out have no score: the model never read them. With
long_texts='chunk' (the prediction then averages the logits of overlapping windows over the whole
text) each window is explained on its own and a token's score is the mean of its windows' scores
(zero from a window that did not read it), which keeps the completeness axiom for the averaged logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from sentilora.batching import autocast
from sentilora.errors import ConfigError
from sentilora.tokens import check_long_texts, kept_positions, special_tokens, window_positions

Method = Literal["integrated_gradients", "grad_x_input"]
METHODS = ("integrated_gradients", "grad_x_input")
DEFAULT_STEPS = 20  # interpolation points for integrated gradients
POINTS_PER_PASS = 10  # interpolation points per forward/backward pass (memory: points x tokens)


@dataclass
class Word:
    start: int  # character offsets into the text: text[start:end] is the word
    end: int
    word: str
    score: float | None  # contribution to the target's logit; None: cut by truncation, never read


@dataclass
class Explanation:
    text: str
    target: str  # the class explained: the prediction, unless one was asked for
    predicted: str
    method: str
    steps: int
    logit: float  # the target's logit for the text
    baseline_logit: float  # ... and for the all-padding baseline
    gap: float  # sum of the scores minus (logit - baseline_logit): 0 for exact integrated gradients
    words: list[Word] = field(default_factory=list)
    windows: int = 1  # windows the text was read in (long_texts='chunk'); the logits are their mean

    def top(self, k: int = 5) -> tuple[list[Word], list[Word]]:
        """The `k` words that raised the target's logit most, and the `k` that lowered it most."""
        read = [w for w in self.words if w.score is not None]
        up = sorted((w for w in read if w.score > 0), key=lambda w: -w.score)[:k]
        down = sorted((w for w in read if w.score < 0), key=lambda w: w.score)[:k]
        return up, down

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    label_names: Sequence[str],
    max_length: int,
    truncation: str,
    device: torch.device,
    dtype: torch.dtype | None,
    target: str | None = None,
    predicted: Sequence[str] | None = None,
    method: Method = "integrated_gradients",
    steps: int = DEFAULT_STEPS,
    long_texts: str = "truncate",
) -> list[Explanation]:
    """One `Explanation` per text, of the class `predicted` names for it (default: the largest logit),
    or of `target` (a label name) for every text. long_texts: 'truncate' (the bundle's truncation) or
    'chunk' (overlapping windows over the whole text, as `Classifier.logits` reads it)."""
    if method not in METHODS:
        raise ConfigError(f"--method {method}: choose integrated_gradients or grad_x_input.")
    if steps < 1:
        raise ConfigError("--steps must be at least 1.")
    check_long_texts(long_texts)
    if target is not None and target not in label_names:
        raise ConfigError(f"--target {target!r} is not one of this model's labels: {', '.join(label_names)}.")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("explanations need a fast (Rust) tokenizer, for word offsets; this model's is not one.")
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        out = []
        for n, text in enumerate(texts):
            enc = tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
            length = len(enc["input_ids"])
            windows = ([kept_positions(length, budget, truncation)] if long_texts == "truncate"
                       else window_positions(length, budget))
            pairs = [(prefix + [enc["input_ids"][i] for i in w] + suffix, prefix + [pad] * len(w) + suffix) for w in windows]
            logits, base_logits = _logits(model, pairs, device, dtype)
            shown = target or (predicted[n] if predicted is not None else None)
            t = int(logits.argmax()) if shown is None else list(label_names).index(shown)
            token_scores: dict[int, float] = {}
            for w, (ids, base) in zip(windows, pairs):
                scores = _attribute(model, ids, base, t, device, dtype, method, steps)[len(prefix) : len(prefix) + len(w)]
                for pos, score in zip(w, scores.tolist()):
                    token_scores[pos] = token_scores.get(pos, 0.0) + score / len(windows)
            words = _words(text, enc, token_scores)
            decided = predicted[n] if predicted is not None else label_names[int(logits.argmax())]
            change = float(logits[t] - base_logits[t])
            out.append(Explanation(
                text=text, target=label_names[t], predicted=decided, method=method,
                steps=steps if method == "integrated_gradients" else 1, logit=float(logits[t]),
                baseline_logit=float(base_logits[t]), gap=sum(w.score for w in words if w.score is not None) - change,
                words=words, windows=len(windows)))
        return out
    finally:
        model.train(was_training)


def _logits(model, pairs, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a text and of its baseline, each the mean over the (text, baseline) window pairs."""
    seqs = [seq for pair in pairs for seq in pair]  # text, baseline, text, baseline, ...: all of one length
    with torch.no_grad(), autocast(device, dtype):
        logits = model(input_ids=torch.tensor(seqs, device=device),
                       attention_mask=torch.ones(len(seqs), len(seqs[0]), dtype=torch.long, device=device)).logits.float()
    return logits[0::2].mean(0).cpu(), logits[1::2].mean(0).cpu()


def _attribute(model, ids, base, t, device, dtype, method, steps) -> torch.Tensor:
    """Per-token scores (fp32, special tokens included) of class `t`'s logit for one window."""
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = embed(torch.tensor([ids], device=device)).float()
        x0 = embed(torch.tensor([base], device=device)).float()
    mask = torch.ones(1, len(ids), dtype=torch.long, device=device)
    alphas = (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps
    if method == "grad_x_input":
        alphas = torch.ones(1, device=device)
    grad_sum = torch.zeros_like(x[0])
    for chunk in alphas.split(POINTS_PER_PASS):
        points = (x0 + chunk[:, None, None] * (x - x0)).to(embed.weight.dtype).requires_grad_(True)
        with torch.enable_grad(), autocast(device, dtype):
            out = model(inputs_embeds=points, attention_mask=mask.expand(len(chunk), -1)).logits[:, t].float().sum()
            (grad,) = torch.autograd.grad(out, points)
        grad_sum += grad.float().sum(0)
    return ((x - x0)[0] * grad_sum / len(alphas)).sum(-1).cpu()


def shades(words: Sequence[Word]) -> list[float | None]:
    """Each word's score over the largest absolute score among `words` (-1 to 1; None: not read): the
    strength every display shades a word with."""
    scale = max((abs(w.score) for w in words if w.score is not None), default=0.0) or 1.0
    return [None if w.score is None else w.score / scale for w in words]


def _words(text: str, enc: Any, token_scores: dict[int, float]) -> list[Word]:
    """Token scores summed per word (the tokenizer's word split); a word none of whose tokens were read scores None."""
    spans: dict[int, list[int]] = {}
    for pos, word in enumerate(enc.word_ids()):
        if word is not None:
            spans.setdefault(word, []).append(pos)
    words = []
    for positions in spans.values():
        start, end = enc["offset_mapping"][positions[0]][0], enc["offset_mapping"][positions[-1]][1]
        read = [token_scores[p] for p in positions if p in token_scores]
        words.append(Word(start=start, end=end, word=text[start:end], score=sum(read) if read else None))
    return words
