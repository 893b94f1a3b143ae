"""The one prediction engine: the CLI, the Python API, evaluation and the server all call it.

Inputs are tokenised with the bundle's own truncation, sorted by length and batched longest-first,
so padding is near zero; results come back in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from sentilora import model as M
from sentilora.errors import DataError

log = logging.getLogger(__name__)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = np.argsort([-n for n in lengths], kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size].tolist()


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: Any = None,
) -> np.ndarray:
    """Logits for pre-tokenised inputs, batched longest-first; rows in input order. (n, num_labels)"""
    was_training = model.training
    model.eval()
    num_labels = model.config.num_labels
    out = np.zeros((len(ids), num_labels), dtype=np.float32)
    for idx in length_sorted_batches([len(s) for s in ids], batch_size):
        batch = {k: v.to(device) for k, v in M.collate([ids[i] for i in idx], pad_id).items()}
        with M.autocast(device, dtype):
            out[idx] = model(**batch).logits.float().cpu().numpy()
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Classifier:
    """A trained text classifier: `Classifier.load(run_dir).predict(["Great film!"])`."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        manifest: M.Manifest,
        *,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        self.device = M.pick_device(device)
        self.dtype = M.pick_dtype(precision, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", precision: str = "fp32") -> Classifier:
        """Load a run bundle (from `sentilora train`) or a merged model (from `sentilora merge`)."""
        model, tokenizer, manifest = M.load_bundle(path)
        return cls(model, tokenizer, manifest, device=device, precision=precision)

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.label_names)

    def save(self, path: str | Path) -> None:
        """Write this classifier as a bundle that `Classifier.load` reads back."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise DataError(f"{path}: folder exists and is not empty; choose a new folder.")
        path.mkdir(parents=True, exist_ok=True)
        if self.manifest.kind == "merged":
            self.model.save_pretrained(str(path), safe_serialization=True)
            self.tokenizer.save_pretrained(str(path))
            self.manifest.save(path)
        else:
            M.save_bundle(self.model, self.tokenizer, self.manifest, path)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return M.encode(self.tokenizer, texts, max_length=self.manifest.max_length, truncation=self.manifest.truncation)

    def predict_proba(self, texts: str | Sequence[str], *, batch_size: int = 32, progress: Any = None) -> np.ndarray:
        """Class probabilities, shape (n_texts, n_labels), columns in `label_names` order."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        logits = predict_logits(
            self.model, self.encode(texts), pad_id=self.pad_id, batch_size=batch_size,
            device=self.device, dtype=self.dtype, progress=progress,
        )
        return softmax(logits)

    @overload
    def predict(self, texts: str, *, batch_size: int = 32) -> str: ...
    @overload
    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> list[str]: ...
    def predict(self, texts, *, batch_size: int = 32):
        """Predicted label names (one string for one text)."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        labels = [self.label_names[i] for i in probs.argmax(axis=1)]
        return labels[0] if isinstance(texts, str) else labels


def check_texts(texts: Sequence[Any], *, origin: str = "input", column: str | None = None) -> None:
    """Every text must be a non-empty string; the error names the first bad row (1-based)."""
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        i = bad[0]
        what = "empty text" if isinstance(texts[i], str) else f"not text ({type(texts[i]).__name__})"
        where = f"{origin} row {i + 1}" + (f", column '{column}'" if column else "")
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(f"{where}: {what}{more}. Remove such rows or fill them in.")


def predict_file(
    clf: Classifier,
    input_path: str | Path,
    output_path: str | Path,
    *,
    text_column: str = "text",
    batch_size: int = 32,
    progress: Any = None,
) -> int:
    """Score every row of a CSV/TSV/JSON/JSONL/Parquet/TXT file; output keeps all input columns, in order.

    Adds `pred_label` and one `prob_<label>` column per class. Returns the number of rows.
    """
    from sentilora.data import read_table, write_table

    if Path(output_path).suffix.lower() == ".txt":
        raise DataError(f"{output_path}: a scored file has several columns; write .csv, .tsv, .jsonl, .json or .parquet.")
    df = read_table(input_path)
    if text_column not in df.columns:
        raise DataError(
            f"{input_path}: no column '{text_column}' (columns: {', '.join(map(str, df.columns))}). "
            "Pass the right one with --text-column."
        )
    texts = df[text_column].tolist()
    check_texts(texts, origin=str(input_path), column=text_column)
    probs = clf.predict_proba(texts, batch_size=batch_size, progress=progress)
    out = df.copy()
    out["pred_label"] = [clf.label_names[i] for i in probs.argmax(axis=1)]
    for j, name in enumerate(clf.label_names):
        out[f"prob_{name}"] = probs[:, j]
    write_table(out, output_path)
    return len(out)
