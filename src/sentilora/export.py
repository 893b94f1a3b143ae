"""Export a run to ONNX (fp32, or int8 with dynamic quantisation), with a parity check.

Every export is compared with the PyTorch model (fp32, adapter merged) on a fixed set of texts; the
export fails, leaving nothing behind, when the labels agree on fewer than `min_agreement` of them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sentilora import quantize as Q
from sentilora.bundle import Manifest, export_source, save_blend
from sentilora.config import Config
from sentilora.data import load_data, sample_dir
from sentilora.errors import BundleError, SentiloraError
from sentilora.files import atomic_write_json, check_new_folder, new_folder, remove
from sentilora.predict import UNPADDED_KEY, Classifier, OnnxBackend
from sentilora.tables import read_table

log = logging.getLogger(__name__)

Quantize = Literal["none", "int8"]
PARITY_TEXTS = 200
OPSET = 17


class ExportError(SentiloraError):
    """The exported model does not agree with the PyTorch model."""


def parity_texts(n: int = PARITY_TEXTS) -> list[str]:
    """A fixed, varied set of texts: real reviews from the bundled IMDB test sample, long and short."""
    texts = read_table(sample_dir() / "test.parquet")["text"].tolist()[: n - n // 4]
    # Short texts too: first sentences, so both padding-heavy and full-length batches are checked.
    return texts + [t.split(".")[0][:150] or t[:150] for t in texts[: n // 4]]


def _export_graph(model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    sample = tokenizer(["a short text", "a somewhat longer text to give the batch two lengths"], return_tensors="pt", padding=True)
    args = (sample["input_ids"], sample["attention_mask"])
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    # Eager attention traces to the plain MatMul/Softmax pattern that ONNX Runtime's transformer
    # optimizer fuses into one Attention op; the SDPA trace is left unfused.
    previous = getattr(model.config, "_attn_implementation", None)
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but exports these encoders reliably; its tracer
            # warnings concern shape checks that are constant for encoder-only models.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_axes=dynamic, opset_version=OPSET)
    finally:
        if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)


def _fuse(src: Path, dst: Path, config: Any) -> dict[str, int] | None:
    """ONNX Runtime's transformer optimizer: fused attention, embedding/skip layer norms and bias-GELU.

    Returns the fused-operator counts, or None (and `dst` untouched) when the architecture is not
    one it knows; the unfused graph then serves as it is. Parity is checked on the result either way.
    """
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if config.model_type not in ("bert", "distilbert", "roberta", "xlm-roberta", "electra") or not heads or not hidden:
        return None
    try:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions

        options = FusionOptions("bert")
        options.use_multi_head_attention = True  # Q, K and V stay MatMuls: int8 quantises them like the others
        fused = optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden,
                                         optimization_options=options)
        _unpadded_attention(fused.model)
        fused.save_model_to_file(str(dst))
        return {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    except Exception as e:  # the optimizer is best-effort: an unknown pattern must not break the export
        log.warning("ONNX Runtime's transformer optimizer could not fuse this graph (%s); exporting it unfused.", e)
        return None


def _unpadded_attention(model: Any) -> None:
    """Drop the padding mask from the fused MultiHeadAttention nodes, so ONNX Runtime runs them with its
    flash-attention kernel (which takes no mask), and mark the graph: `OnnxBackend` then feeds it only
    unpadded rows (texts of one length at a time), where the mask would change nothing.

    Measured on MiniLM at 8 x 512 tokens (2 cores): fp32 0.47 s against 0.53 s for the fused Attention op,
    int8 0.27 s against 0.32 s; attention is the part int8 does not speed up, so the int8/fp32 ratio rises.
    """
    import onnx

    attention = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    if not attention:
        return
    for node in attention:
        del node.input[4:]  # query, key, value, bias; then key_padding_mask and the rest, all unused here
    onnx.helper.set_model_props(model, {UNPADDED_KEY: "1"})


def parity(reference: Any, candidate: Any, texts: Sequence[str], *, p_ref: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement of two classifiers' decisions on `texts` (each under its bundle's calibration and
    threshold, as deployed), and the largest probability difference. `p_ref`: the reference's
    probabilities for `texts`, when already computed."""
    p_ref = reference.predict_proba(texts) if p_ref is None else p_ref
    p_new = candidate.predict_proba(texts)
    agree = Q.agreement(np.array(reference.decide(p_ref)), np.array(candidate.decide(p_new)))
    return {"texts": len(texts), "label_agreement": agree, "max_prob_diff": float(np.abs(p_ref - p_new).max())}


def heldout_texts(n: int = PARITY_TEXTS) -> list[str]:
    """A second fixed set, apart from the parity texts: the next reviews of the bundled test sample."""
    texts = read_table(sample_dir() / "test.parquet")["text"].tolist()
    start = PARITY_TEXTS - PARITY_TEXTS // 4  # where parity_texts stops taking whole reviews
    return texts[start : start + n]


def calibration_texts(run_dir: Path, n: int = 64) -> tuple[list[str], str]:
    """Texts like the user's for ranking the nodes: the run's own training texts when its data can be
    read here, else the bundled training sample (never the parity or held-apart texts)."""
    rng = np.random.default_rng(0)
    try:
        cfg = Config.from_yaml(run_dir / "config.yaml")
        texts = load_data(cfg.data, need=("train",)).splits["train"].texts
        origin = "the run's training texts"
    except (SentiloraError, OSError):
        texts = read_table(sample_dir() / "train.parquet")["text"].tolist()
        origin = "the bundled IMDB training sample"
    pick = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[i] for i in sorted(pick)], origin


def _int8(reference: Classifier, fp32: Path, out: Path, *, run_dir: Path, texts: Sequence[str], p_ref: np.ndarray,
          min_agreement: float, threads: int | None) -> dict[str, Any]:
    """Accuracy-aware int8 into `out`; the search's figures for the manifest. `p_ref`: the reference's probabilities for `texts`."""
    calib, origin = calibration_texts(run_dir)
    gate = set(texts)
    calib = [t for t in calib if t not in gate]

    def probs(graph: Path, batch: Sequence[str]) -> np.ndarray:
        clf = Classifier(None, reference.tokenizer, reference.manifest, backend=OnnxBackend(graph, threads=threads),
                         max_length=reference.max_length, baseline=reference.baseline)
        return clf.predict_proba(list(batch))

    result = Q.search(fp32, out, probs=probs, decide=lambda p: np.array(reference.decide(p)),
                      reference_parity=np.array(reference.decide(p_ref)), parity_texts=texts,
                      calibration_texts=calib, min_agreement=min_agreement)
    ranked = sorted(result.sensitivity.items(), key=lambda kv: -kv[1])
    return {"fp32_nodes": result.excluded, "fp32_weight_share": round(result.fp32_weight_share, 4),
            "search": result.candidates, "calibration": f"{len(calib)} of {origin}",
            "sensitivity": {k: round(v, 6) for k, v in ranked}, "agreement": result.agreement, "passed": result.passed}


def export_onnx(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    quantize: Quantize = "none",
    min_agreement: float = 0.995,
    texts: Sequence[str] | None = None,
    optimize: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write `out_dir` with model.onnx + tokenizer + manifest that `Classifier.load` reads; returns parity figures.

    `optimize` runs ONNX Runtime's transformer optimizer (fused attention and layer norms) before
    any quantisation; the fused graph runs on ONNX Runtime only. `quantize="int8"` searches for the
    fastest int8 graph that passes the gate (`sentilora.quantize`): the nodes it had to keep in fp32
    are in the manifest's `export.int8` and in parity.json.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BundleError("ONNX export needs onnx and onnxruntime: pip install 'sentilora[onnx]'.") from None

    man = Manifest.read(run_dir)
    if man.kind == "onnx":
        raise BundleError(f"{run_dir}: already an ONNX export; export the run folder it came from{export_source(man)} "
                          "or a `sentilora merge` folder.")
    out = Path(out_dir)
    hint = "choose a new output folder or remove it"
    check_new_folder(out, hint=hint)  # before the slow part
    reference = Classifier.load(run_dir, device="cpu", precision="fp32", merge=True)
    model = reference.model
    with new_folder(out, hint=hint) as tmp:
        raw, fp32 = tmp / "model.raw.onnx", tmp / "model.fp32.onnx"
        log.info("exporting %s to ONNX (opset %d)", run_dir, OPSET)
        _export_graph(model, reference.tokenizer, raw)
        fused = _fuse(raw, fp32, model.config) if optimize else None
        if fused is None:
            raw.replace(fp32)
        else:
            log.info("fused operators: %s", ", ".join(f"{k} {v}" for k, v in fused.items()))
            raw.unlink()
        gate_texts = list(texts) if texts is not None else parity_texts()
        p_ref = reference.predict_proba(gate_texts)  # once: the int8 search and the gate both compare with it
        int8 = None
        if quantize == "int8":
            log.info("quantising to int8")
            int8 = _int8(reference, fp32, tmp / "model.onnx", run_dir=Path(run_dir), texts=gate_texts, p_ref=p_ref,
                         min_agreement=min_agreement, threads=threads)
            fp32.unlink()
            remove(tmp / "model.onnx.work")
        else:
            fp32.replace(tmp / "model.onnx")
        reference.tokenizer.save_pretrained(str(tmp))
        save_blend(tmp, reference.manifest, reference.baseline)
        export_info = {"file": "model.onnx", "format": "onnx", "quantize": quantize, "opset": OPSET, "source": str(run_dir),
                       "fused_operators": fused or {}, **({"int8": int8} if int8 else {})}
        Manifest(**{**reference.manifest.__dict__, "kind": "onnx", "export": export_info}).save(tmp)

        exported = Classifier.load(tmp, threads=threads)
        check = parity(reference, exported, gate_texts, p_ref=p_ref)
        check["min_agreement"] = min_agreement
        check["passed"] = check["label_agreement"] >= min_agreement
        check["heldout"] = parity(reference, exported, heldout_texts())
        if int8:
            check["int8_fp32_nodes"] = int8["fp32_nodes"]
        export_info["parity"] = check
        Manifest(**{**exported.manifest.__dict__, "export": export_info}).save(tmp)
        atomic_write_json(tmp / "parity.json", check)
        if not check["passed"]:
            raise ExportError(_refusal(check, min_agreement, int8))
    log.info("parity: %.2f%% label agreement (held-apart texts: %.2f%%), max probability difference %.2g",
             100 * check["label_agreement"], 100 * check["heldout"]["label_agreement"], check["max_prob_diff"])
    if int8 and int8["fp32_nodes"]:
        log.info("int8: %d nodes (%.0f%% of the weights) kept in fp32 to meet the gate (sensitive on %s): %s",
                 len(int8["fp32_nodes"]), 100 * int8["fp32_weight_share"], int8["calibration"], ", ".join(int8["fp32_nodes"]))
    return check


def _refusal(check: dict[str, Any], min_agreement: float, int8: dict[str, Any] | None) -> str:
    """The one line that says what was reached and what to do."""
    n = check["texts"]
    if int8 is None:
        return (f"export disagrees with the PyTorch model on {1 - check['label_agreement']:.1%} of {n} texts "
                f"(needs >= {min_agreement:.1%} agreement); nothing was written. Try --quantize none.")
    best = check["label_agreement"]
    kept = len(int8["fp32_nodes"])
    floor = int(best * 1000) / 1000  # the flag value that accepts this graph
    return (f"no int8 graph reached {min_agreement:.1%} agreement with the PyTorch model: the best agreed on {best:.1%} of "
            f"{n} texts ({check['heldout']['label_agreement']:.1%} of {check['heldout']['texts']} held-apart texts) with "
            f"{kept} node{'s' * (kept != 1)} kept in fp32; nothing was written. Accept it with --min-agreement {floor:g}, "
            "or export fp32 with --quantize none.")
