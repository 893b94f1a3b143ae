from __future__ import annotations

import pytest
import torch

from sentilora import model as M
from sentilora.batching import bucket_width, collate
from sentilora.tokens import encode
from sentilora.errors import ModelLoadError


@pytest.mark.parametrize(
    "arch, heads, targets",
    [("distilbert", ["classifier", "pre_classifier"], ["q_lin", "v_lin"]), ("bert", ["classifier"], ["query", "value"])],
)
def test_new_weights_become_trained_heads(tiny_models, arch, heads, targets):
    base, new = M.load_base_model(str(tiny_models[arch]), ["a", "b", "c"])
    # Found from the loading report, not by name: DistilBERT's pre_classifier is new too.
    assert M.head_modules(base, new) == heads
    assert M.target_modules(base, None) == targets
    peft_model = M.add_lora(base, r=2, alpha=4, dropout=0.0, targets=targets, heads=heads)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    for h in heads:
        assert any(f"{h}.modules_to_save.default.weight" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert not any("embeddings" in n for n in trainable)


def test_unknown_architecture_lists_linear_layers(tiny_models):
    base, _ = M.load_base_model(str(tiny_models["bert"]), ["a", "b"])
    base.config.model_type = "mystery"
    with pytest.raises(ModelLoadError, match=r"no default LoRA targets for architecture 'mystery'.*query.*value"):
        M.target_modules(base, None)
    with pytest.raises(ModelLoadError, match=r"--lora.target_modules q_lin not found.*Its linear layers are"):
        M.target_modules(base, ["q_lin"])


def test_offline_hub_model_error_suggests_minilm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not load the tokenizer 'distilbert-base-uncased'.*--model.name minilm"):
        M.load_tokenizer("distilbert")
    with pytest.raises(ModelLoadError) as e:
        M.load_tokenizer("distilbert")
    assert "Did you mean" not in str(e.value)  # the alias given is not suggested back


def test_a_typo_of_an_alias_is_caught_before_any_hub_request(monkeypatch):
    def no_hub(*a, **k):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_hub)
    with pytest.raises(ModelLoadError, match=r"--model.name 'minilmm' is neither an alias nor a local folder: did you mean 'minilm'\?"):
        M.load_tokenizer("minilmm")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # farther from an alias: tried, and the failure suggests it
    with pytest.raises(ModelLoadError, match=r"'minilm-l12'.*Did you mean the alias 'minilm'\?"):
        M.load_tokenizer("minilm-l12")


@pytest.mark.parametrize("truncation", ["right", "left", "head_tail"])
def test_encode_truncation(tiny_models, truncation):
    tok = M.load_tokenizer(str(tiny_models["bert"]))
    words = [f"{w}" for w in ("good bad " * 30).split()]
    words[0], words[-1] = "movie", "plot"
    ids = encode(tok, [" ".join(words), "great"], max_length=16, truncation=truncation)
    long, short = ids
    assert len(long) == 16 and len(short) == 3
    assert long[0] == tok.cls_token_id and long[-1] == tok.sep_token_id
    tokens = tok.convert_ids_to_tokens(long[1:-1])
    assert (tokens[0] == "movie") == (truncation in ("right", "head_tail"))
    assert (tokens[-1] == "plot") == (truncation in ("left", "head_tail"))


def test_collate_pads_dynamically():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_training_batches_pad_to_few_widths():
    """Training pads long batches to a few widths (steady memory), never below the longest text,
    short ones not at all, and the padding is masked out."""
    widths = {bucket_width(w) for w in range(65, 513)}
    assert all(bucket_width(w) >= w for w in range(1, 513))
    assert widths == set(range(96, 513, 32))
    assert bucket_width(20) == 20 and bucket_width(200) == 224 and bucket_width(256) == 256
    batch = collate([[5] * 70, [8]], pad_id=0, bucket_limit=512)
    assert batch["input_ids"].shape == (2, 96)
    assert batch["attention_mask"].sum(1).tolist() == [70, 1]
    # never past what the model takes: a 100-position model gets 99 tokens padded to 100, not 128
    assert collate([[5] * 99], pad_id=0, bucket_limit=100)["input_ids"].shape == (1, 100)


@pytest.mark.parametrize("arch, pooling", [("bert", "mean"), ("bert", "cls"), ("distilbert", "cls")])
def test_bucket_padding_leaves_the_logits_unchanged(tiny_models, arch, pooling):
    torch.manual_seed(0)
    model, _ = M.load_base_model(str(tiny_models[arch]), ["a", "b"], pooling=pooling)
    model.eval()
    v = model.config.vocab_size
    ids = [[1] + [3 + i % (v - 3) for i in range(n)] + [2] for n in (80, 11)]
    with torch.no_grad():
        tight, bucketed = (model(**collate(ids, pad_id=0, bucket_limit=b)).logits for b in (None, 128))
    assert collate(ids, pad_id=0, bucket_limit=128)["input_ids"].shape[1] > len(ids[0])
    torch.testing.assert_close(bucketed, tight, atol=1e-5, rtol=0)


def test_fingerprint_tells_base_models_apart(tiny_models):
    a, _ = M.load_base_model(str(tiny_models["bert"]), ["x", "y"])
    b, _ = M.load_base_model(str(tiny_models["bert"]), ["x", "y"])
    assert M.fingerprint(a) == M.fingerprint(b)
    with torch.no_grad():
        b.get_input_embeddings().weight[0, 0] += 1.0
    assert M.fingerprint(a) != M.fingerprint(b)


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_loads_as_fp32(tiny_models, tmp_path, stored):
    """Hub checkpoints are often stored in fp16/bf16; transformers 5 would keep that dtype, and LoRA
    training on half-precision weights diverges (NaN on a GPU). The base must come up in fp32."""
    import shutil

    from transformers import AutoModel

    half = tmp_path / "half"
    shutil.copytree(tiny_models["bert"], half)
    AutoModel.from_pretrained(str(half), dtype=stored).save_pretrained(str(half), safe_serialization=True)
    assert AutoModel.from_pretrained(str(half)).dtype == stored  # the checkpoint really is half precision
    model, _ = M.load_base_model(str(half), ["neg", "pos"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_pickled_weights_are_refused(tiny_models, tmp_path):
    """Base models load from safetensors only: a .bin is unpickled code, and the README promises safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["bert"], folder)
    weights = load_file(str(folder / "model.safetensors"))
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"pickled form \(\.bin\).*safe_serialization=True") as e:
        M.load_base_model(str(folder), ["negative", "positive"])
    assert "\n" not in str(e.value)
