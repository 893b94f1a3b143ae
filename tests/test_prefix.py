"""Frozen-prefix caching and LoRA placement (--lora.layers, --lora.target_modules presets)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from sentilora import model as M
from sentilora.batching import collate
from sentilora.tokens import encode
from sentilora.errors import ConfigError
from sentilora.evaluate import evaluate_run
from sentilora.prefix import FrozenPrefix
from sentilora.train import train

TEXTS = ["The movie was great and wonderful.", "Awful, boring, the worst plot.", "fine", "It was okay, not more and not less."]


def _lora_model(path, **kw):
    base, new = M.load_base_model(str(path), ["negative", "positive"])
    heads = M.head_modules(base, new)
    return M.add_lora(base, r=2, alpha=4, dropout=0.0, targets=M.target_modules(base, kw.pop("targets", None)), heads=heads, **kw)


def _lora_layers(model) -> set[str]:
    return {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}


def test_top_layers_only_get_lora(tiny_model):
    model = _lora_model(tiny_model, top_layers=1)
    names = _lora_layers(model)
    assert names and all(".layer.1." in n for n in names), names


def test_layers_out_of_range(tiny_model):
    with pytest.raises(ConfigError, match="between 1 and 2"):
        _lora_model(tiny_model, top_layers=3)


@pytest.mark.parametrize("preset, per_layer", [("qv", 2), ("attention", 4), ("all", 6)])
def test_target_presets(tiny_model, preset, per_layer):
    model = _lora_model(tiny_model, targets=[preset])
    names = _lora_layers(model)
    assert len(names) == 2 * per_layer, sorted(names)
    assert not any("pooler" in n or "classifier" in n for n in names)


def test_cached_forward_matches_full_model(tiny_model):
    model = _lora_model(tiny_model, top_layers=1).eval()
    with torch.no_grad():  # move LoRA off zero so the top layer's adapter matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    tok = M.load_tokenizer(str(tiny_model))
    ids = encode(tok, TEXTS, max_length=32, truncation="head_tail")
    prefix = FrozenPrefix(model, 1)
    hidden = prefix.compute(ids, pad_id=0, device=torch.device("cpu"), dtype=None)
    assert [h.shape[0] for h in hidden] == [len(s) for s in ids] and hidden[0].dtype == torch.bfloat16
    batch = collate(ids, 0)
    with torch.no_grad():
        full = model(**batch).logits
        cached = prefix.forward(hidden, batch)
    assert full.shape == cached.shape
    torch.testing.assert_close(cached, full, atol=3e-2, rtol=3e-2)  # bf16 storage of the cache
    # and the model is left whole: a plain forward still runs all layers
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, full)


def test_train_with_cached_prefix(tiny_model, dataset, tmp_path):
    train_csv, test_csv = dataset()
    run = tmp_path / "run"
    cfg = tiny_config(tiny_model, train_csv, test_csv, **{"lora.layers": 1, "lora.target_modules": "all"})
    assert cfg.train.cache_prefix
    result = train(cfg, run, progress=False)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [1]
    # The bundle, loaded as a plain PEFT model (no cache), reproduces the loss measured through the cache.
    val = evaluate_run(run, split="validation", precision="fp32")["metrics"]
    assert val["loss"] == pytest.approx(result.best_metrics["loss"], abs=2e-2)
    steps = [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == result.steps and all(s == s for s in steps)
