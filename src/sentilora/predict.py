"""The one prediction engine: the CLI, the Python API, evaluation, exports and the server call it.

Texts are tokenised with the bundle's own truncation, sorted by token length and cut into batches
under a token budget, so padding is near zero and short texts go many to a batch; results come
back in input order. Backends: PyTorch (the adapter merged in memory, or kept separate) and
ONNX Runtime (fp32 or int8 exports from `sentilora export`). A bundle trained with a TF-IDF blend
(--train.baseline_blend) mixes the baseline's probabilities in at `Classifier.logits`, under every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from sentilora.batching import autocast, collate, length_sorted_batches, pick_device, pick_dtype
from sentilora.baseline import Baseline, blended_logits
from sentilora.bundle import Manifest, load_blend, load_bundle, load_tokenizer_folder, save_bundle, save_merged
from sentilora.calibration import calibrated_probs, decide
from sentilora.errors import BundleError, ConfigError
from sentilora.explain import DEFAULT_STEPS, Explanation, Method, explain_texts
from sentilora.files import check_new_folder, first_line, new_folder
from sentilora.tables import check_texts
from sentilora.tokens import check_long_texts, chunk_windows, encode, position_limit, special_tokens

log = logging.getLogger(__name__)

LongTexts = Literal["truncate", "chunk"]
Progress = Callable[[int], None] | None
DEFAULT_MAX_TOKENS = 8192  # padded tokens per forward pass: near the CPU sweet spot for 6-12 layer encoders
DEFAULT_MAX_BATCH = 64


# ---- batching ----------------------------------------------------------------------------------


def inference_weights(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> tuple[torch.nn.Module, torch.dtype | None]:
    """For bf16 inference on a CPU, cast the weights once instead of autocasting every call.

    CPU autocast re-casts every weight matrix on each forward pass (its cache lives for one
    `autocast` block): ~40 ms per call for MiniLM, which dominates small batches. Returns the model
    and the autocast dtype still to use (None once the weights themselves are bf16).
    """
    if dtype == torch.bfloat16 and device.type == "cpu":
        return model.to(torch.bfloat16), None
    return model, dtype


class TorchBackend:
    """A PyTorch model on a device, with optional autocast precision."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype | None) -> None:
        self.model, self.device, self.dtype = model.to(device).eval(), device, dtype

    @torch.inference_mode()
    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with autocast(self.device, self.dtype):
            return self.model(**batch).logits.float().cpu().numpy()


UNPADDED_KEY = "sentilora.unpadded_attention"  # ONNX metadata: the graph's attention reads no padding mask


class OnnxBackend:
    """An ONNX Runtime session over an exported model (inputs input_ids, attention_mask).

    A graph marked `UNPADDED_KEY` (export's flash attention, which takes no padding mask) is fed one
    run of equal-length texts at a time, cut to their length, so no row ever holds padding. The
    engine's batches are length-sorted, so such runs are contiguous and usually long.
    """

    name = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError(f"{path}: ONNX models need onnxruntime: pip install 'sentilora[onnx]'.") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
            raise BundleError(f"{path}: not a loadable ONNX model ({first_line(e)}). Re-run `sentilora export`.") from None
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.unpadded = UNPADDED_KEY in self.session.get_modelmeta().custom_metadata_map

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {k: v.numpy() for k, v in batch.items() if k in self.inputs}
        if not self.unpadded:
            return self.session.run(None, feed)[0].astype(np.float32)
        lengths = batch["attention_mask"].sum(dim=1).numpy()  # from the batch: the graph may not read the mask
        cuts = np.flatnonzero(np.diff(lengths)) + 1
        parts = []
        for rows in np.split(np.arange(len(lengths)), cuts):
            n = int(lengths[rows[0]])
            parts.append(self.session.run(None, {k: v[rows[0] : rows[-1] + 1, :n] for k, v in feed.items()})[0])
        return np.concatenate(parts).astype(np.float32)


def run_batches(
    backend: Callable[[dict[str, torch.Tensor]], np.ndarray],
    ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    num_labels: int,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    progress: Progress = None,
) -> np.ndarray:
    """Logits for pre-tokenised inputs; rows in input order. (n, num_labels)"""
    out = np.zeros((len(ids), num_labels), dtype=np.float32)
    for idx in length_sorted_batches([len(s) for s in ids], max_batch, max_tokens):
        out[idx] = backend(collate([ids[i] for i in idx], pad_id))
        if progress is not None:
            progress(len(idx))
    return out


def predict_logits(
    model: torch.nn.Module,
    ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: Progress = None,
) -> np.ndarray:
    """Logits of a PyTorch model (used for validation during training); leaves its mode as it was."""
    was_training = model.training
    try:
        return run_batches(TorchBackend(model, device=device, dtype=dtype), ids, pad_id=pad_id,
                           num_labels=model.config.num_labels, max_batch=batch_size, max_tokens=None, progress=progress)
    finally:
        model.train(was_training)


# ---- the classifier ------------------------------------------------------------------------------


class Classifier:
    """A trained text classifier: `Classifier.load(run_dir).predict(["Great film!"])`."""

    def __init__(
        self,
        model: torch.nn.Module | None,
        tokenizer: Any,
        manifest: Manifest,
        *,
        device: str = "auto",
        precision: str = "auto",
        backend: Any = None,
        max_length: int | None = None,
        baseline: Baseline | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.manifest = manifest
        if bool(manifest.baseline_weight) != (baseline is not None):
            raise ValueError("Classifier: pass the bundle's blended baseline (bundle.load_blend) exactly when its "
                             "manifest has a baseline_weight.")
        self.baseline = baseline
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.model = model
        self.weights_cast = False  # True when the weights were cast to bf16 for inference
        if backend is None:
            if model is None:
                raise ValueError("Classifier needs a model or a backend.")
            dev = pick_device(device)
            wanted = pick_dtype(precision, dev)
            model, dtype = inference_weights(model, dev, wanted)
            self.model, self.weights_cast = model, dtype != wanted
            backend = TorchBackend(model, device=dev, dtype=dtype)
        self.backend = backend
        self.max_length = self._tokens_read(max_length)

    def _tokens_read(self, asked: int | None) -> int:
        """Tokens read per text: `asked`, else the bundle's prediction length; never past the encoder's limit."""
        n = asked or self.manifest.reads
        limit = self.manifest.positions
        if limit is None and asked and self.model is not None and hasattr(self.model, "config"):
            # A bundle from before `positions`: ask the encoder (not the tokenizer: older merged
            # folders saved it with the training length).
            limit = position_limit(self.model)
        if n < 8 or (limit and n > limit):
            span = f"8 to {limit}" if limit else "at least 8"
            raise ConfigError(f"--max-length {n}: this model reads {span} tokens per text "
                              f"(it was trained with {self.manifest.max_length}); pick a length in that range.")
        return n

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        precision: str = "auto",
        merge: bool = True,
        threads: int | None = None,
        max_length: int | None = None,
    ) -> Classifier:
        """Load a run bundle, a merged model or an ONNX export.

        `precision` auto = bf16 where the hardware has it (CPU with AVX-512 BF16, GPUs), else fp32;
        `merge` folds LoRA into the weights in memory (faster; the bundle on disk is unchanged);
        `max_length` = tokens read per text (default: the bundle's prediction length, see
        `Manifest.reads`; texts are cut with the truncation the model was trained with).
        """
        path = Path(path)
        manifest = Manifest.read(path)
        if manifest.kind == "onnx":
            onnx_file = path / (manifest.export or {}).get("file", "model.onnx")
            if not onnx_file.is_file():
                raise BundleError(f"{path}: {onnx_file.name} is missing; re-run `sentilora export`.")
            return cls(None, load_tokenizer_folder(path, path), manifest, backend=OnnxBackend(onnx_file, threads=threads),
                       max_length=max_length, baseline=load_blend(path, manifest))
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer, manifest = load_bundle(path)
        if merge and manifest.kind in ("adapter", "ensemble"):
            model = model.merge_and_unload()
        return cls(model, tokenizer, manifest, device=device, precision=precision, max_length=max_length,
                   baseline=load_blend(path, manifest))

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.label_names)

    def save(self, path: str | Path) -> None:
        """Write this classifier as a bundle that `Classifier.load` reads back (PyTorch backends)."""
        path = Path(path)
        check_new_folder(path)
        if self.model is None:
            raise BundleError("an ONNX classifier is saved by `sentilora export`; copy its folder instead.")
        if self.weights_cast:
            raise BundleError("this classifier holds bf16 inference weights; load it with precision='fp32' to save it.")
        if self.manifest.kind == "ensemble":
            raise BundleError("an ensemble (--train.ensemble) is saved as its run folder, members/ included; copy that folder.")
        with new_folder(path) as tmp:
            if hasattr(self.model, "peft_config"):
                save_bundle(self.model, self.tokenizer, self.manifest, tmp, self.baseline)
            else:  # merged (on disk or in memory)
                save_merged(self.model, self.tokenizer, self.manifest, tmp, self.baseline)

    def explain(self, texts: str | Sequence[str], *, target: str | None = None, method: Method = "integrated_gradients",
                steps: int = DEFAULT_STEPS, long_texts: LongTexts = "truncate") -> list[Explanation]:
        """Word-level explanations (see `sentilora.explain`): each word's contribution to the logit of the
        label `predict` shows for the text (or of `target`), over the tokens this classifier reads
        (long_texts='chunk': every word, in the overlapping windows `logits` averages). With a TF-IDF blend
        (--train.baseline_blend) the label is the blend's and the attributions are of the transformer's logit."""
        if self.model is None:
            raise BundleError("explanations need the PyTorch model (gradients); an ONNX export has none. "
                              "Explain with the run folder or the merged folder instead.")
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_texts(texts)
        shown = self.decide(self.predict_proba(texts, long_texts=long_texts))  # the labels predict shows (calibration, threshold)
        return explain_texts(self.model, self.tokenizer, texts, label_names=self.label_names, max_length=self.max_length,
                             truncation=self.manifest.truncation, device=self.backend.device, dtype=self.backend.dtype,
                             target=target, predicted=shown, method=method, steps=steps, long_texts=long_texts)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return encode(self.tokenizer, texts, max_length=self.max_length, truncation=self.manifest.truncation)

    def logits(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = DEFAULT_MAX_BATCH,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        long_texts: LongTexts = "truncate",
        progress: Progress = None,
    ) -> np.ndarray:
        """Raw logits (n_texts, n_labels), before calibration. long_texts='chunk' averages the logits of
        overlapping windows. With a TF-IDF blend (manifest.baseline_weight) they are the log of the blended
        probabilities (`baseline.blended_logits`; the baseline reads each text whole)."""
        out = self._model_logits(texts, batch_size=batch_size, max_tokens=max_tokens, long_texts=long_texts, progress=progress)
        if self.baseline is None:
            return out
        return blended_logits(out, self.baseline.predict_proba(texts), self.manifest.baseline_weight)

    def _model_logits(self, texts: Sequence[str], *, batch_size: int, max_tokens: int | None, long_texts: LongTexts,
                      progress: Progress) -> np.ndarray:
        check_long_texts(long_texts)
        k = len(self.label_names)
        run = dict(pad_id=self.pad_id, num_labels=k, max_batch=batch_size, max_tokens=max_tokens)
        if long_texts == "truncate":
            return run_batches(self.backend, self.encode(texts), progress=progress, **run)
        prefix, suffix = special_tokens(self.tokenizer)
        raw = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        windows, owner = [], []
        for i, ids in enumerate(raw):
            for w in chunk_windows(ids, prefix, suffix, self.max_length):
                windows.append(w)
                owner.append(i)
        win_logits = run_batches(self.backend, windows, **run)
        owner_arr = np.asarray(owner)
        out = np.zeros((len(texts), k), dtype=np.float32)
        np.add.at(out, owner_arr, win_logits)
        out /= np.bincount(owner_arr, minlength=len(texts))[:, None]
        if progress is not None:
            progress(len(texts))
        return out

    def predict_proba(self, texts: str | Sequence[str], *, batch_size: int = DEFAULT_MAX_BATCH, progress: Progress = None,
                      long_texts: LongTexts = "truncate", max_tokens: int | None = DEFAULT_MAX_TOKENS) -> np.ndarray:
        """Class probabilities, shape (n_texts, n_labels), columns in `label_names` order."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        logits = self.logits(texts, batch_size=batch_size, max_tokens=max_tokens, long_texts=long_texts, progress=progress)
        return calibrated_probs(logits, self.manifest)  # the bundle's temperature (1.0 = plain softmax)

    def decide(self, probs: np.ndarray) -> list[str]:
        """Label names for rows of probabilities (the bundle's decision threshold, if any)."""
        return [self.label_names[i] for i in decide(probs, self.manifest)]

    @overload
    def predict(self, texts: str, *, batch_size: int = DEFAULT_MAX_BATCH) -> str: ...
    @overload
    def predict(self, texts: Sequence[str], *, batch_size: int = DEFAULT_MAX_BATCH) -> list[str]: ...
    def predict(self, texts, *, batch_size: int = DEFAULT_MAX_BATCH):
        """Predicted label names (one string for one text)."""
        labels = self.decide(self.predict_proba(texts, batch_size=batch_size))
        return labels[0] if isinstance(texts, str) else labels
