"""The run bundle on disk: its manifest, and saving, loading, sharing and merging it.

A run bundle is a folder:

    sentilora.json      manifest: base model, its fingerprint, labels, head modules, tokenisation
    config.yaml         the resolved training config
    adapter/            PEFT adapter (LoRA weights + trained head), safetensors
    tokenizer/          the tokenizer the model was trained with
    history.json        per-epoch validation metrics and the best epoch
    train_log.jsonl     per-step training loss
    baseline.npz        only with a TF-IDF blend (--train.baseline_blend; manifest: baseline_weight)

A merged export (`sentilora merge`) is a plain Transformers model folder plus the same manifest;
an ONNX export (`sentilora export`) is an ONNX graph, its tokenizer and the manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sentilora.baseline import BLEND_FILE, Baseline, load_baseline
from sentilora.errors import BundleError
from sentilora.files import atomic_path, atomic_write_json, first_line, new_folder, read_json_object
from sentilora.heads import set_pooling
from sentilora.model import Ensemble, fingerprint, load_base_model

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "sentilora.json"


def sentilora_version() -> str:
    """The installed package's version (recorded in every bundle)."""
    try:
        return metadata.version("sentilora")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@dataclass
class Manifest:
    kind: str  # "adapter" (LoRA bundle), "merged", "ensemble" (adapters in `members`) or "onnx"
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
    pooling: str = "cls"  # what the head reads: "cls" (first token / pooler) or "mean" (heads.set_pooling)
    members: list[str] | None = None  # kind "ensemble": its models' bundle folders, relative to this one
    # --train.baseline_blend: the TF-IDF baseline's share of the class probabilities (baseline.BLEND_FILE); 0 = none
    baseline_weight: float = 0.0

    @property
    def reads(self) -> int:
        """Tokens per text read when predicting, special tokens included."""
        return self.predict_max_length or self.max_length

    def save(self, folder: Path) -> None:
        self.sentilora_version = sentilora_version()
        atomic_write_json(folder / MANIFEST, self.__dict__)

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST
        if folder.is_file():
            raise BundleError(f"{folder}: is a file, not a run folder. Pass the --out folder of a `sentilora train` "
                              "run (or a merge or export folder).")
        if not folder.is_dir():
            raise BundleError(f"{folder}: no such run folder. Pass the --out folder of a `sentilora train` run.")
        if not path.is_file():
            # a run folder that training left unfinished has its config.yaml (and checkpoints) already
            resume = ("; this looks like an interrupted run: finish it with `sentilora train --out "
                      f"{folder} --resume`" if (folder / "config.yaml").is_file() else "")
            raise BundleError(
                f"{folder}: not a sentilora bundle (no {MANIFEST}). Pass a run folder from `sentilora train` "
                f"or `sentilora merge`{resume}."
            )
        damaged = f"{path}: the manifest is damaged"
        try:
            raw = read_json_object(path)
        except ValueError as e:
            raise BundleError(f"{damaged} ({e}). Re-create the bundle (train, merge or export again).") from None
        if raw.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path}: bundle format {raw.get('format')} is not supported by this version.")
        try:
            return cls(**raw)
        except TypeError as e:
            raise BundleError(f"{damaged} ({first_line(e)}). Re-create the bundle.") from None


def save_bundle(model: nn.Module, tokenizer: Any, manifest: Manifest, folder: Path, baseline: Baseline | None = None) -> None:
    """Write adapter, tokenizer, the blended baseline if any, and manifest (last, so a folder with a manifest is complete)."""
    model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    save_blend(folder, manifest, baseline)
    manifest.save(folder)


def save_blend(folder: Path, manifest: Manifest, baseline: Baseline | None) -> None:
    """Write the TF-IDF baseline a blended bundle needs (nothing for others)."""
    if manifest.baseline_weight:
        if baseline is None:
            raise BundleError(f"{folder}: the manifest blends in a TF-IDF baseline but none was given to save.")
        baseline.save(folder / BLEND_FILE)


def load_blend(folder: str | Path, manifest: Manifest) -> Baseline | None:
    """The TF-IDF baseline a blended bundle mixes into its probabilities (--train.baseline_blend); None for others."""
    if not manifest.baseline_weight:
        return None
    path = Path(folder) / BLEND_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: {BLEND_FILE} is missing; this model blends in a TF-IDF baseline at weight "
                          f"{manifest.baseline_weight:g} (--train.baseline_blend). Copy the whole folder, or train again.")
    try:
        return load_baseline(path)
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: damaged ({first_line(e)}). Copy the whole run folder again, or train again.") from None


def load_tokenizer_folder(folder: Path, owner: Path) -> Any:
    """A tokenizer saved inside a bundle; a missing or damaged one is a one-line BundleError."""
    from transformers import AutoTokenizer

    if not folder.is_dir() or not any(folder.iterdir()):
        raise BundleError(f"{owner}: the tokenizer files are missing ({folder}); the bundle is incomplete. "
                          "Copy the whole bundle folder again, or re-create it.")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise BundleError(f"{owner}: the tokenizer in {folder} is damaged ({first_line(e)}). Re-create the bundle.") from None


def adapter_config(folder: Path) -> dict[str, Any]:
    """The bundle's adapter/adapter_config.json, checked to be there and readable."""
    path = folder / "adapter" / "adapter_config.json"
    if not path.is_file():
        raise BundleError(f"{folder}: adapter/adapter_config.json is missing; the bundle is incomplete. "
                          "Copy the whole bundle folder again, or re-train.")
    try:
        return read_json_object(path)
    except ValueError as e:
        raise BundleError(f"{path}: damaged ({e}). Copy the bundle again, or re-train.") from None


def _check_head(folder: Path, man: Manifest) -> None:
    # peft adds its own defaults ("classifier", "score") to modules_to_save; ours must all be there.
    if not set(man.head_modules) <= set(adapter_config(folder).get("modules_to_save") or []):
        raise BundleError(f"{folder}: the adapter does not hold the trained head {man.head_modules}; the bundle was altered.")


def load_bundle(folder: str | Path) -> tuple[nn.Module, Any, Manifest]:
    """Load a bundle (adapter or merged) for inference; checks base model and head."""
    folder = Path(folder)
    man = Manifest.read(folder)
    from transformers import AutoModelForSequenceClassification

    if man.kind == "merged":
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), use_safetensors=True, dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            raise BundleError(f"{folder}: merged model files are missing or damaged ({first_line(e)}). "
                              "Run `sentilora merge` again.") from None
        set_pooling(model, man.pooling)
        return model.eval(), load_tokenizer_folder(folder, folder), man

    if man.kind == "ensemble":
        return _load_ensemble(folder, man), load_tokenizer_folder(folder / "tokenizer", folder), man

    from peft import PeftModel

    adapter = folder / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise BundleError(f"{folder}: adapter/adapter_model.safetensors is missing; the bundle is incomplete.")
    _check_head(folder, man)
    tokenizer = load_tokenizer_folder(folder / "tokenizer", folder)
    base, new = load_base_model(man.base_model, man.label_names, revision=man.base_revision, pooling=man.pooling)
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
    try:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, OSError) as e:
        raise BundleError(f"{folder}: adapter does not fit the base model ({first_line(e)}).") from None
    return model.eval(), tokenizer, man


def _load_ensemble(folder: Path, man: Manifest) -> Ensemble:
    """The member bundles of an ensemble run, each an adapter on its own copy of the base model."""
    if not man.members:
        raise BundleError(f"{folder}: an ensemble bundle that lists no models; the manifest was altered. Re-train.")
    models = []
    for rel in man.members:
        sub = folder / rel
        if not (sub / MANIFEST).is_file():
            raise BundleError(f"{sub}: a model of this ensemble is missing; copy the whole run folder (members/ "
                              "included), or re-train.")
        model, _, member = load_bundle(sub)
        if member.label_names != man.label_names:
            raise BundleError(f"{sub}: its classes differ from the ensemble's {man.label_names}; the bundle was altered.")
        models.append(model)
    return Ensemble(models).eval()


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
    _check_head(folder, man)
    try:
        model.load_adapter(str(folder / "adapter"), adapter_name=name, is_trainable=False)
    except (RuntimeError, ValueError, OSError) as e:
        raise BundleError(f"{folder}: adapter does not fit the base model ({first_line(e)}).") from None
    return man


def average_adapters(folders: Sequence[Path], out: Path) -> None:
    """Write to `out` (an adapter folder) the adapter whose weights are the mean of the `folders`' bundles
    (a model soup). A LoRA layer adds B @ A to its frozen weight; the mean of N such products is one LoRA
    of rank N x r, A the members' A stacked and B theirs side by side over N, with the same scaling
    (alpha N x alpha), so the soup is exact, not an approximation, and merges into the base like any
    adapter. Every other saved tensor (the trained heads) is averaged."""
    from safetensors.torch import load_file, save_file

    configs = [adapter_config(f) for f in folders]
    shape = {k: configs[0].get(k) for k in ("r", "lora_alpha", "target_modules", "modules_to_save")}
    for f, c in zip(folders[1:], configs[1:]):
        if {k: c.get(k) for k in shape} != shape:
            raise BundleError(f"{f}: its adapter is not shaped like {folders[0]}'s; only runs of one config can be averaged.")
    if any(c.get(k) for c in configs for k in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern")):
        raise BundleError(f"{folders[0]}: DoRA, rsLoRA and per-layer ranks cannot be averaged by stacking ranks.")
    states = [load_file(str(f / "adapter" / "adapter_model.safetensors")) for f in folders]
    n, soup = len(states), {}
    for name in states[0]:
        parts = [s[name] for s in states]
        if ".lora_A." in name:
            soup[name] = torch.cat(parts, dim=0)
        elif ".lora_B." in name:
            soup[name] = torch.cat(parts, dim=1) / n
        else:
            soup[name] = torch.stack(parts).mean(dim=0)
    config = {**configs[0], "r": n * shape["r"], "lora_alpha": n * shape["lora_alpha"]}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file(soup, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def merge_bundle(folder: str | Path, out: str | Path) -> Path:
    """Fold LoRA into the base weights; save a plain Transformers model + tokenizer + manifest."""
    man = Manifest.read(folder)
    if man.kind == "ensemble":
        raise BundleError(f"{folder}: an ensemble of {len(man.members or [])} models (--train.ensemble) cannot be folded "
                          "into one model; predict, serve, evaluate and export read the run folder as it is (for one model, train "
                          "again with --train.ensemble 1).")
    if man.kind == "onnx":
        raise BundleError(f"{folder}: an ONNX export (`sentilora export`), which cannot be merged; merge the run folder "
                          f"it was exported from{export_source(man)}.")
    if man.kind != "adapter":
        raise BundleError(f"{folder}: already a merged model; nothing to merge.")
    model, tokenizer, man = load_bundle(folder)
    out = Path(out)
    with new_folder(out, hint="choose a new output folder or remove it") as tmp:
        save_merged(model.merge_and_unload(), tokenizer, man, tmp, load_blend(folder, man))
    if man.pooling == "mean":
        log.warning("%s reads the mean of all token states (--model.pooling mean): sentilora and its ONNX export "
                    "pool the same way, but plain Transformers code loading this folder reads the first token "
                    "only and would predict differently.", out)
    if man.baseline_weight:
        log.warning("%s blends in a TF-IDF baseline at weight %g (%s; --train.baseline_blend): sentilora and its ONNX "
                    "export blend it too, but plain Transformers code loading this folder reads the transformer's "
                    "probabilities alone.", out, man.baseline_weight, BLEND_FILE)
    return out


def export_source(man: Manifest) -> str:
    """' (PATH)': the folder an ONNX export was made from, as its manifest records it; '' when unknown."""
    source = (man.export or {}).get("source")
    return f" ({source})" if source else ""


def save_merged(model: nn.Module, tokenizer: Any, manifest: Manifest, folder: Path, baseline: Baseline | None = None) -> None:
    """A plain Transformers folder with the real label names, plus the blended baseline if any and the manifest
    (kind 'merged')."""
    model.config.id2label = dict(enumerate(manifest.label_names))
    model.config.label2id = {n: i for i, n in enumerate(manifest.label_names)}
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.model_max_length = manifest.reads  # a pipeline over this folder reads as far as sentilora does
    tokenizer.save_pretrained(str(folder))
    save_blend(folder, manifest, baseline)
    Manifest(**{**manifest.__dict__, "kind": "merged"}).save(folder)
