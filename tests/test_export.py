from __future__ import annotations

import json

import numpy as np
import pytest

from sentilora import Classifier
from sentilora.export import ExportError, export_onnx

pytest.importorskip("onnxruntime")
TEXTS = ["great wonderful film", "the worst, boring plot and a dull story", "fine", "the movie " * 20]


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run("distilbert", ("negative", "neutral", "positive"))


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_onnx_export_loads_and_agrees(run_dir, tmp_path, quantize):
    out = tmp_path / f"onnx-{quantize}"
    check = export_onnx(run_dir, out, quantize=quantize, texts=TEXTS * 5)
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "sentilora.json", "parity.json", "tokenizer.json"}
    assert check["passed"] and check["label_agreement"] >= 0.995
    assert json.loads((out / "parity.json").read_text())["texts"] == 20
    onnx_clf = Classifier.load(out)
    assert onnx_clf.backend.name == "onnx" and onnx_clf.label_names == ["negative", "neutral", "positive"]
    ref = Classifier.load(run_dir, precision="fp32").predict_proba(TEXTS)
    got = onnx_clf.predict_proba(TEXTS)
    np.testing.assert_allclose(got, ref, atol=1e-4 if quantize == "none" else 0.05)


def test_failed_parity_leaves_nothing(run_dir, tmp_path, monkeypatch):
    from sentilora import export

    monkeypatch.setattr(export, "parity", lambda ref, new, texts, **kw: {"texts": len(texts), "label_agreement": 0.9, "max_prob_diff": 0.5})
    with pytest.raises(ExportError, match="disagrees with the PyTorch model on 10.0% of 4 texts"):
        export_onnx(run_dir, tmp_path / "bad", texts=TEXTS)
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_export_fuses_attention_and_matches_unfused(trained_run, tmp_path, arch):
    run = trained_run(arch, ("negative", "positive"))
    export_onnx(run, tmp_path / "fused", texts=TEXTS * 5)
    export_onnx(run, tmp_path / "plain", texts=TEXTS * 5, optimize=False)
    onnx = pytest.importorskip("onnx")
    plain_ops = [n.op_type for n in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node]
    fused_ops = [n.op_type for n in onnx.load(str(tmp_path / "fused" / "model.onnx")).graph.node]
    # Read off the graphs, not the optimizer's statistics, whose operator names change between
    # onnxruntime versions: every attention softmax of the plain graph went into a fused attention op.
    assert plain_ops.count("Softmax") >= 2 and "Softmax" not in fused_ops
    assert any(op.endswith("Attention") for op in fused_ops) and len(fused_ops) < len(plain_ops)
    fused = json.loads((tmp_path / "fused" / "sentilora.json").read_text())["export"]["fused_operators"]
    plain = json.loads((tmp_path / "plain" / "sentilora.json").read_text())["export"]["fused_operators"]
    assert fused and plain == {}
    np.testing.assert_allclose(Classifier.load(tmp_path / "fused").predict_proba(TEXTS),
                               Classifier.load(tmp_path / "plain").predict_proba(TEXTS), atol=1e-4)


def test_damaged_onnx_file_is_one_line(run_dir, tmp_path):
    from sentilora.errors import BundleError

    out = tmp_path / "onnx"
    export_onnx(run_dir, out, texts=TEXTS)
    (out / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(BundleError, match=r"model.onnx: not a loadable ONNX model .*sentilora export") as e:
        Classifier.load(out)
    assert "\n" not in str(e.value)


def test_export_refuses_a_taken_folder(run_dir, tmp_path):
    from sentilora.errors import SentiloraError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(SentiloraError, match="folder exists and is not empty"):
        export_onnx(run_dir, tmp_path / "taken", texts=TEXTS)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_int8_records_what_it_kept_in_fp32(run_dir, tmp_path, caplog):
    out = tmp_path / "int8"
    check = export_onnx(run_dir, out, quantize="int8", texts=TEXTS * 5)
    assert "pre-processing" not in caplog.text  # ONNX Runtime's advice, measured to change nothing here
    info = json.loads((out / "sentilora.json").read_text())["export"]["int8"]
    assert info["passed"] and info["fp32_nodes"] == [] and check["int8_fp32_nodes"] == []  # plain int8 passed here
    assert check["heldout"]["texts"] == 200 and 0 <= check["heldout"]["label_agreement"] <= 1
    assert not (out / "model.onnx.work").exists()
    import onnx
    from onnx.numpy_helper import to_array

    weights = [to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights)  # 7-bit: 2 x 255 x 64 fits a saturating 16-bit sum


def test_int8_search_keeps_sensitive_nodes_in_fp32_cheapest_first(run_dir, tmp_path, monkeypatch):
    """When plain int8 misses the gate, sensitive nodes stay fp32: the sets are tried fewest fp32 weights
    first, so the first that passes is the fastest found."""
    from sentilora import quantize as Q

    kept: list[list[str]] = []
    real = Q.quantize

    def recording(src, dst, *, exclude=(), only=None):
        if only is None:
            kept.append(list(exclude))
        real(src, dst, exclude=exclude, only=only)

    monkeypatch.setattr(Q, "quantize", recording)
    # a gate the tiny model's int8 graph meets only with 3 nodes in fp32
    monkeypatch.setattr(Q, "agreement", lambda ref, cand: 1.0 if len(kept[-1]) >= 3 else 0.9)
    export_onnx(run_dir, tmp_path / "int8", quantize="int8", texts=TEXTS * 5)
    info = json.loads((tmp_path / "int8" / "sentilora.json").read_text())["export"]["int8"]
    shares = [c["fp32_weight_share"] for c in info["search"]]
    assert kept[0] == [] and shares[0] == 0 and shares == sorted(shares)  # plain first, then cheapest first
    assert len(kept[-1]) == 3 and all(len(k) < 3 for k in kept[:-1])  # stopped at the first set that passed
    assert info["fp32_nodes"] == kept[-1] and info["fp32_weight_share"] == shares[-1] > 0
    sens = info["sensitivity"]
    by_sensitivity = sorted(sens, key=lambda n: -sens[n])
    assert info["fp32_nodes"] == sorted(info["fp32_nodes"], key=lambda n: -sens[n])  # listed most sensitive first
    assert set(by_sensitivity[:1]) in [set(k) for k in kept]  # the single most sensitive node was tried
    assert "training texts" in info["calibration"] or "bundled" in info["calibration"]


def test_exclusion_sets_put_cheap_sensitive_nodes_first():
    from sentilora.quantize import exclusion_sets

    sensitivity = {"ffn": 0.010, "value": 0.004, "key": 0.001, "out": 0.0005}
    weights = {"ffn": 4, "value": 1, "key": 1, "out": 1}
    sets = exclusion_sets(sensitivity, weights)
    assert sets[0] == ["value"]  # most sensitive per weight: cheaper than the most sensitive node
    assert ["ffn"] in sets and ["ffn", "value"] in sets  # the plain ranking's sets are there too
    costs = [sum(weights[n] for n in s) for s in sets]
    assert costs == sorted(costs) and len(sets) == len({frozenset(s) for s in sets})


def test_int8_that_cannot_pass_says_what_it_reached(run_dir, tmp_path, monkeypatch):
    from sentilora import quantize as Q

    monkeypatch.setattr(Q, "agreement", lambda ref, cand: 0.97)
    monkeypatch.setattr(Q, "EXCLUDE_STEPS", (1,))
    with pytest.raises(ExportError) as e:
        export_onnx(run_dir, tmp_path / "int8", quantize="int8", texts=TEXTS * 5, min_agreement=0.995)
    message = str(e.value)
    assert "no int8 graph reached 99.5%" in message and "--min-agreement" in message and "\n" not in message
    assert not (tmp_path / "int8").exists()


def test_the_gate_compares_decisions_as_deployed():
    """Parity compares decisions under each bundle's calibration and threshold, not bare argmax labels."""
    from dataclasses import dataclass

    from sentilora.calibration import decide
    from sentilora.export import parity

    probs = np.array([[0.6, 0.4], [0.45, 0.55], [0.3, 0.7], [0.8, 0.2]])

    @dataclass
    class Stub:
        threshold: float | None
        temperature: float = 1.0

        def predict_proba(self, texts):
            return probs[: len(texts)]

        def decide(self, p):
            return [["negative", "positive"][i] for i in decide(p, self)]

    assert parity(Stub(None), Stub(None), ["a"] * 4)["label_agreement"] == 1.0
    # same probabilities, same argmax: but with a 0.35 threshold the deployed decisions differ on row 0
    assert parity(Stub(None), Stub(0.35), ["a"] * 4)["label_agreement"] == 0.75


def test_flash_attention_graph_is_fed_no_padding(trained_run, tmp_path):
    """The export's attention takes no padding mask (ONNX Runtime's flash kernel): the backend feeds it
    equal-length rows only, so a mixed-length batch scores as each text does alone."""
    from sentilora.batching import collate
    from sentilora.predict import UNPADDED_KEY

    export_onnx(trained_run("bert", ("negative", "positive")), tmp_path / "onnx", texts=TEXTS * 5)
    clf = Classifier.load(tmp_path / "onnx")
    backend = clf.backend
    assert backend.unpadded and UNPADDED_KEY in backend.session.get_modelmeta().custom_metadata_map
    ids = clf.encode(TEXTS + TEXTS[:2])
    batch = collate(ids, clf.pad_id)
    assert len({len(i) for i in ids}) == len(TEXTS)  # several lengths, so most rows are padded
    alone = np.concatenate([backend(collate([i], clf.pad_id)) for i in ids])
    np.testing.assert_allclose(backend(batch), alone, atol=1e-5)
    raw = backend.session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    assert np.abs(raw - alone).max() > 2e-5  # fed padding, the mask-free attention reads it (3e-4 here)


def test_an_onnx_export_is_not_exported_or_merged_again(run_dir, tmp_path):
    """export and merge read a run (or merged) folder; given an ONNX export they say so, in one line."""
    from typer.testing import CliRunner

    from sentilora.cli import app

    onnx = tmp_path / "onnx"
    export_onnx(run_dir, onnx, texts=TEXTS, optimize=False)
    invoke = CliRunner().invoke
    for command, expect in (("export", "already an ONNX export; export the run folder it came from"),
                            ("merge", "an ONNX export (`sentilora export`), which cannot be merged")):
        r = invoke(app, [command, str(onnx), str(tmp_path / "out")])
        said = " ".join(r.output.split())
        assert r.exit_code == 2 and said.startswith("error:") and r.output.strip().count("\n") == 0, r.output
        assert expect in said and f"({run_dir})" in said
        assert not (tmp_path / "out").exists()
