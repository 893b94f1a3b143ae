"""Accuracy-aware int8: the fastest dynamically quantised graph that passes the export's parity gate.

Plain dynamic int8 (weights 7-bit per channel, activations quantised on the fly) of every MatMul and
fused Attention node is tried first. When it disagrees with the PyTorch model too often, the nodes
are ranked by how much quantising each one alone moves the class probabilities on calibration texts (the run's
own training texts where they can be read), and sensitive ones are left in fp32 until the graph
passes the gate on the parity texts. Which ones: the k most sensitive, or the k most sensitive per
weight (a small value projection costs a quarter of a feed-forward matrix kept in fp32), for a few
k each; these sets are tried cheapest first (fewest fp32 weights), so the first that passes is the
fastest found. Calibration and parity texts are disjoint, so the gate stays honest; a second
held-apart set is scored too and reported.

Neural Compressor's accuracy-aware tuning works the same way (sensitive layers fall back to fp32);
ONNX Runtime's `quantize_dynamic(nodes_to_exclude=...)` does the quantising.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

QUANTISED_OPS = ("MatMul", "Attention")
EXCLUDE_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)  # how many nodes stay fp32 in the sets tried

Scorer = Callable[[Path, Sequence[str]], np.ndarray]  # (graph, texts) -> probabilities


@dataclass
class Int8Result:
    """What the search settled on, for the manifest, parity.json and the user."""

    agreement: float  # on the parity texts: the gate's figure
    excluded: list[str] = field(default_factory=list)  # nodes kept in fp32, most sensitive first
    fp32_weight_share: float = 0.0  # of the quantisable nodes' weights, the share kept fp32 (time goes with it)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every graph tried: excluded count, agreement, s
    sensitivity: dict[str, float] = field(default_factory=dict)  # mean |probability change| per node quantised alone
    passed: bool = False


def name_nodes(src: Path, dst: Path) -> dict[str, int]:
    """Give every node a unique name (the quantiser selects nodes by name); the quantisable ones, in
    order, with the number of weights each multiplies by (at least 1): its cost if left in fp32."""
    import onnx

    model = onnx.load(str(src))
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    onnx.save(model, str(dst))
    return {n.name: max([1, *(sizes.get(i, 0) for i in n.input)]) for n in model.graph.node if n.op_type in QUANTISED_OPS}


def exclusion_sets(sensitivity: dict[str, float], weights: dict[str, int]) -> list[list[str]]:
    """The fp32 sets to try, cheapest (fewest weights) first: the k most sensitive nodes, and the k
    most sensitive per weight, for k in EXCLUDE_STEPS (fewer than all nodes). Each set lists its
    nodes most sensitive first."""
    by_sensitivity = sorted(weights, key=lambda n: -sensitivity[n])
    per_weight = sorted(weights, key=lambda n: -sensitivity[n] / weights[n])
    sets = {frozenset(rank[:k]) for rank in (by_sensitivity, per_weight) for k in EXCLUDE_STEPS if k < len(weights)}
    ordered = sorted(sets, key=lambda s: (sum(weights[n] for n in s), len(s), sorted(s)))
    return [sorted(s, key=lambda n: -sensitivity[n]) for s in ordered]


def quantize(src: Path, dst: Path, *, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> None:
    """Dynamic int8 of the MatMul and fused Attention nodes of `src`, except `exclude` (or only `only`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights on MatMuls only (the pooler/classifier Gemms stay fp32) agreed best with
    # fp32 on MiniLM. Weights use 7 bits (reduce_range): CPUs without VNNI sum uint8 x int8 products
    # in saturating 16-bit pairs, which 7-bit weights cannot overflow, so the graph the gate checked
    # computes the same there; they also agreed better here (the gate passed with 4 MiniLM P1 nodes
    # in fp32 instead of 6, and 12 instead of 16 on SST-2) at the same speed. Today's exports fuse
    # attention into MultiHeadAttention, whose Q/K/V projections are plain MatMuls; a graph with the
    # older fused Attention op has it quantised too. Shape inference cannot type the outputs of these
    # com.microsoft ops, hence DefaultTensorType (FLOAT).
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=list(exclude),
                         nodes_to_quantize=list(only) if only is not None else None,
                         extra_options={"DefaultTensorType": 1})
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drop ONNX Runtime's "consider to run pre-processing" warning: its pre-processing (shape inference
    and graph clean-up, `quant_pre_process`) gave the same agreement on our already fused graphs
    (MiniLM P1: 97.0% of the parity texts with or without), so the advice would only mislead."""
    return "pre-processing before quantization" not in record.getMessage()


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.mean(np.asarray(reference) == np.asarray(candidate)))


def search(
    fp32: Path,
    out: Path,
    *,
    probs: Scorer,
    decide: Callable[[np.ndarray], np.ndarray],
    reference_parity: np.ndarray,
    parity_texts: Sequence[str],
    calibration_texts: Sequence[str],
    min_agreement: float,
) -> Int8Result:
    """Write to `out` the int8 graph with the fewest fp32 nodes whose decisions agree with
    `reference_parity` (the PyTorch model's) on at least `min_agreement` of `parity_texts`; if none
    does, the best one found (result.passed False)."""
    work = out.with_name(out.name + ".work")
    work.mkdir(exist_ok=True)
    named = work / "fp32.onnx"
    weights = name_nodes(fp32, named)
    total = sum(weights.values())
    result = Int8Result(agreement=0.0)

    def trial(exclude: Sequence[str]) -> float:
        t0 = time.perf_counter()
        path = work / "int8.onnx"
        quantize(named, path, exclude=exclude)
        agree = agreement(reference_parity, decide(probs(path, parity_texts)))
        share = sum(weights[n] for n in exclude) / total
        result.candidates.append({"fp32_nodes": len(exclude), "fp32_weight_share": round(share, 4), "agreement": agree,
                                  "seconds": round(time.perf_counter() - t0, 1)})
        log.info("int8 with %d of %d nodes left in fp32 (%.0f%% of the weights): %.2f%% agreement", len(exclude),
                 len(weights), 100 * share, 100 * agree)
        if agree > result.agreement:  # sets come cheapest first: a tie keeps the cheaper one
            result.agreement, result.excluded, result.fp32_weight_share = agree, list(exclude), share
            path.replace(out)
        return agree

    if trial([]) >= min_agreement:
        result.passed = True
        return result
    result.sensitivity = sensitivity(named, list(weights), probs=probs, texts=calibration_texts, work=work)
    for exclude in exclusion_sets(result.sensitivity, weights):
        if trial(exclude) >= min_agreement:
            result.passed = True
            break
    return result


def sensitivity(named: Path, nodes: Sequence[str], *, probs: Scorer, texts: Sequence[str], work: Path) -> dict[str, float]:
    """Mean absolute change of the class probabilities on `texts` when each node alone is int8."""
    base = probs(named, texts)
    out = {}
    for node in nodes:
        path = work / "one.onnx"
        quantize(named, path, only=[node])
        out[node] = float(np.abs(probs(path, texts) - base).mean())
    log.info("most sensitive nodes: %s", ", ".join(f"{n} {v:.2g}" for n, v in sorted(out.items(), key=lambda kv: -kv[1])[:5]))
    return out
