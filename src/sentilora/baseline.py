"""The yardstick beside every fine-tuned model: TF-IDF (1-2 grams) + logistic regression, fitted in seconds.

Below a few hundred labelled texts per class this often matches or beats a LoRA-tuned transformer,
so `sentilora evaluate` fits it on the run's own training texts and shows it next to the model.

It is also a second opinion worth mixing in (--train.baseline_blend): a word-count model errs on other
texts than a transformer does, so the mean of their class probabilities, at a weight chosen on the run's
validation texts, can beat both. A blended bundle keeps the fitted baseline in BLEND_FILE (plain arrays,
no pickle) and its weight in the manifest. scikit-learn and numpy only; nothing here touches torch.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentilora.files import atomic_write_bytes

NAME = "TF-IDF 1-2 grams + logistic regression"
# Bigrams seen once are mostly noise and, on tens of thousands of texts, most of the vocabulary:
# from this many training texts on, a term must occur in two of them.
MIN_DF_2_FROM = 1000
# On the bundled IMDB sample (16 to 500 texts per class) accuracy hardly moved with C; log-loss did,
# and of C = 1, 4 and 10 it was lowest at 10 for every size (L2-normalised TF-IDF rows need little
# regularisation; a small C leaves every probability near uniform).
C = 10.0
BLEND_FILE = "baseline.npz"  # in a bundle whose manifest has a baseline_weight
# The weights tried for a blend (the baseline's share of the probability); the one with the lowest validation
# log-loss is kept, 0 (no blend) included. Above 0.6 never won on SST (bench/recipes.py, *-blend groups).
BLEND_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(13))


@dataclass
class Baseline:
    """A fitted TF-IDF + logistic-regression classifier over class indices 0..n_classes-1."""

    vectorizer: Any  # sklearn TfidfVectorizer
    model: Any  # sklearn LogisticRegression
    n_classes: int
    fit_seconds: float
    train_n: int
    name: str = NAME

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, (n, n_classes); a class with no training rows gets 0."""
        p = self.model.predict_proba(self.vectorizer.transform(list(texts)))
        out = np.zeros((p.shape[0], self.n_classes), dtype=np.float64)
        out[:, self.model.classes_] = p
        return out

    def save(self, path: Path) -> None:
        """Write the fitted vocabulary, idf and coefficients to `path` (.npz of plain arrays: nothing executable)."""
        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        buf = io.BytesIO()
        np.savez_compressed(buf, terms=np.array(terms, dtype=str), idf=self.vectorizer.idf_,
                            coef=self.model.coef_, intercept=self.model.intercept_, classes=self.model.classes_,
                            n_classes=np.array(self.n_classes), train_n=np.array(self.train_n))
        atomic_write_bytes(path, buf.getvalue())


def load_baseline(path: Path) -> Baseline:
    """A baseline written by `Baseline.save`, ready to predict (the same probabilities as when it was saved)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    terms = arrays["terms"].tolist()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary={t: i for i, t in enumerate(terms)})
    vectorizer.idf_ = arrays["idf"]
    model = LogisticRegression(C=C)
    model.coef_, model.intercept_, model.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
    return Baseline(vectorizer, model, int(arrays["n_classes"]), 0.0, int(arrays["train_n"]))


def blend(model_probs: np.ndarray, baseline_probs: np.ndarray, weight: float) -> np.ndarray:
    """The blended class probabilities: (1 - weight) of the model's plus weight of the baseline's."""
    return (1.0 - weight) * np.asarray(model_probs, dtype=np.float64) + weight * np.asarray(baseline_probs, dtype=np.float64)


def blended_logits(logits: np.ndarray, baseline_probs: np.ndarray, weight: float) -> np.ndarray:
    """Logits whose softmax is the blend of softmax(`logits`) and the baseline's probabilities: the log of the
    blend, so calibration, thresholds and argmax read a blended bundle like any other (as an ensemble's)."""
    from scipy.special import softmax

    p = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    return np.log(np.clip(blend(p, baseline_probs, weight), 1e-12, None)).astype(np.float32)


def log_loss(probs: np.ndarray, labels: Sequence[int]) -> float:
    """Mean negative log-probability of the true class."""
    y = np.asarray(labels)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def choose_weight(model_probs: np.ndarray, baseline_probs: np.ndarray, labels: Sequence[int]) -> tuple[float, list[float]]:
    """The BLEND_WEIGHTS entry with the lowest log-loss on these (validation) texts, and each one's log-loss.
    Log-loss rather than accuracy: on a few hundred texts accuracy moves in steps and picked weights by chance."""
    losses = [log_loss(blend(model_probs, baseline_probs, w), labels) for w in BLEND_WEIGHTS]
    return BLEND_WEIGHTS[int(np.argmin(losses))], losses


def fit_baseline(train_texts: Sequence[str], train_labels: Sequence[int], *, n_classes: int, seed: int) -> Baseline:
    """Fit TF-IDF (word 1-2 grams, sublinear tf) + logistic regression on labelled texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, y = list(train_texts), np.asarray(train_labels)
    t0 = time.perf_counter()
    # float64 features (the default): with float32 the probabilities sum to 1 only to float32 precision,
    # which scikit-learn's log-loss warns about
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2 if len(texts) >= MIN_DF_2_FROM else 1)
    model = LogisticRegression(C=C, max_iter=1000, random_state=seed)
    model.fit(vectorizer.fit_transform(texts), y)
    return Baseline(vectorizer, model, n_classes, time.perf_counter() - t0, len(texts))


def verdict(model_accuracy: float, baseline: dict[str, Any]) -> str:
    """One plain sentence: is the transformer worth it over the baseline (`evaluate`'s result["baseline"])?"""
    b, secs = baseline["metrics"]["accuracy"], fit_time(baseline["fit_seconds"])
    if weight := baseline.get("blended_into_model"):
        return (f"sentilora (accuracy {model_accuracy:.4f}) mixes this baseline (alone {b:.4f}, fitted in {secs}) "
                f"into its probabilities at weight {weight:g} (--train.baseline_blend): the two err on different "
                f"texts, and the weight was chosen on the run's validation texts.")
    if b >= model_accuracy:
        return (f"The TF-IDF + logistic-regression baseline is as good or better here (accuracy {b:.4f} vs "
                f"{model_accuracy:.4f}, fitted in {secs}): the transformer is not worth it on this data yet; "
                "more labelled data usually changes that.")
    return (f"sentilora beats the TF-IDF + logistic-regression baseline by {(model_accuracy - b) * 100:.1f} points "
            f"({model_accuracy:.4f} vs {b:.4f}; the baseline fitted in {secs}).")


def fit_time(s: float) -> str:
    """Seconds as the verdict and the report show them."""
    return "under 0.1 s" if s < 0.1 else f"{s:,.1f} s"
