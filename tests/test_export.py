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

    monkeypatch.setattr(export, "parity", lambda ref, new, texts: {"texts": len(texts), "label_agreement": 0.9, "max_prob_diff": 0.5})
    with pytest.raises(ExportError, match="disagrees with the PyTorch model on 10.0% of 4 texts"):
        export_onnx(run_dir, tmp_path / "bad", texts=TEXTS)
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_export_fuses_attention_and_matches_unfused(trained_run, tmp_path, arch):
    run = trained_run(arch, ("negative", "positive"))
    export_onnx(run, tmp_path / "fused", texts=TEXTS * 5)
    export_onnx(run, tmp_path / "plain", texts=TEXTS * 5, optimize=False)
    fused = json.loads((tmp_path / "fused" / "sentilora.json").read_text())["export"]["fused_operators"]
    plain = json.loads((tmp_path / "plain" / "sentilora.json").read_text())["export"]["fused_operators"]
    assert fused.get("Attention") == 2 and plain == {}  # one fused attention per layer of the 2-layer model
    np.testing.assert_allclose(Classifier.load(tmp_path / "fused").predict_proba(TEXTS),
                               Classifier.load(tmp_path / "plain").predict_proba(TEXTS), atol=1e-4)
