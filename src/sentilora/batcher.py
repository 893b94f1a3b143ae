"""The model side of the service: the models it answers with, and the micro-batcher that feeds them.

- Models: every NAME=PATH is a run bundle, a merged model or an ONNX export. Adapter runs trained
  on the same base model (same fingerprint, same number of classes) share one copy of its weights:
  the first is loaded, the others are added as further PEFT adapters and switched per batch.
- Micro-batching: requests go into one bounded queue; a single worker takes what is waiting (after
  at most `max_wait_ms`), groups it by model and makes one engine call per model. The engine sorts
  those texts by token length and cuts them under a token budget, so short texts batch many at a
  time and long ones are never padded to each other. Model calls run on one worker thread, so the
  event loop stays free for health checks, metrics and new requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sentilora.batching import pick_device, pick_dtype
from sentilora.bundle import Manifest, add_adapter, load_blend, load_bundle
from sentilora.errors import ConfigError
from sentilora.guard import Metrics, ServeSettings
from sentilora.predict import Classifier, TorchBackend, inference_weights

log = logging.getLogger(__name__)


# ---- models --------------------------------------------------------------------------------------


class AdapterBackend(TorchBackend):
    """One named adapter of a PEFT model that several adapters share; activates it per call."""

    def __init__(self, model: torch.nn.Module, adapter: str, *, device: torch.device, dtype: torch.dtype | None) -> None:
        super().__init__(model, device=device, dtype=dtype)
        self.adapter = adapter

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        if self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)
        return super().__call__(batch)


@dataclass
class Served:
    """A model the service answers with, under its name."""

    name: str
    path: str
    kind: str  # "adapter", "adapter (shared base)", "merged", "ensemble", "onnx"
    classifier: Classifier

    def info(self) -> dict[str, Any]:
        """What /v1/models shows: no path (the server's folder layout is nobody else's business)."""
        man = self.classifier.manifest
        return {"name": self.name, "kind": self.kind, "base_model": man.base_model,
                "labels": list(man.label_names), "max_length": self.classifier.max_length}


def parse_model_args(args: Sequence[str]) -> dict[str, str]:
    """["runs/a", "b=runs/b"] -> {"a": "runs/a", "b": "runs/b"}; a bare path is named after its folder."""
    out: dict[str, str] = {}
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep:
            name, path = Path(arg).name or "default", arg
        if not name or not path:
            raise ConfigError(f"model argument '{arg}': expected RUN_DIR or NAME=RUN_DIR.")
        if name in out:
            raise ConfigError(f"model name '{name}' is given twice; name them NAME=RUN_DIR.")
        out[name] = path
    if not out:
        raise ConfigError("give at least one model: sentilora serve RUN_DIR [NAME=RUN_DIR ...].")
    return out


def load_models(specs: dict[str, str], settings: ServeSettings) -> dict[str, Served]:
    """Load every model once; adapter runs on the same base share its weights."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    manifests = {name: Manifest.read(path) for name, path in specs.items()}
    groups: dict[tuple, list[str]] = {}
    for name, man in manifests.items():
        if man.kind == "adapter":
            groups.setdefault((man.base_model, man.base_fingerprint, len(man.label_names)), []).append(name)
    served: dict[str, Served] = {}
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.precision, device)
    for names in groups.values():
        if len(names) == 1:
            continue
        first = names[0]
        model, tokenizer, man = load_bundle(specs[first])  # adapter "default"
        adapters = {first: "default"}
        for other in names[1:]:
            add_adapter(model, specs[other], other)
            adapters[other] = other
        model, shared_dtype = inference_weights(model.to(device).eval(), device, dtype)
        for name in names:
            tok = tokenizer if name == first else _tokenizer(specs[name])
            backend = AdapterBackend(model, adapters[name], device=device, dtype=shared_dtype)
            clf = Classifier(model, tok, manifests[name], backend=backend, max_length=settings.max_length,
                             baseline=load_blend(specs[name], manifests[name]))
            served[name] = Served(name, specs[name], "adapter (shared base)", clf)
        log.info("models %s share one copy of %s", ", ".join(names), man.base_model)
    for name, path in specs.items():
        if name not in served:
            clf = Classifier.load(path, device=settings.device, precision=settings.precision, threads=settings.threads,
                                  max_length=settings.max_length)
            served[name] = Served(name, path, manifests[name].kind, clf)
    return {name: served[name] for name in specs}  # in the order given; the first is the default


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(path) / "tokenizer"))


# ---- the micro-batcher ---------------------------------------------------------------------------


class QueueFull(Exception):
    """More texts are waiting than `queue_texts` allows; the request should be retried later."""


@dataclass
class _Job:
    model: str
    texts: list[str]
    future: asyncio.Future
    explain: dict[str, Any] | None = None  # Classifier.explain's options; None: classify
    cost: int = 0  # queue units: one per text to classify, more per text to explain (explain_cost)


def explain_cost(method: str, steps: int) -> int:
    """Queue units one explained text costs: a forward and a backward pass (about 3 forward passes'
    work) per interpolation point, against one forward pass for a classified text."""
    return 3 * (steps if method == "integrated_gradients" else 1)


class Batcher:
    """Collects concurrent requests and runs them through the engine in as few model calls as possible."""

    def __init__(self, models: dict[str, Served], settings: ServeSettings, metrics: Metrics) -> None:
        self.models, self.settings, self.metrics = models, settings, metrics
        self.jobs: deque[_Job] = deque()
        self.waiting_texts = 0
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentilora-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for job in self.jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        self.executor.shutdown(wait=True)

    def submit(self, model: str, texts: list[str], *, explain: dict[str, Any] | None = None) -> asyncio.Future:
        """Queue texts for `model`; the future gets their probabilities, (len(texts), classes), or with
        `explain` (Classifier.explain's options) their explanations. An explained text takes
        `explain_cost` places of the queue's --queue-texts, so explanations cannot crowd it out cheaply."""
        cost = len(texts) * (1 if explain is None else explain_cost(explain["method"], explain["steps"]))
        if self.waiting_texts + cost > self.settings.queue_texts:
            raise QueueFull
        fut = asyncio.get_running_loop().create_future()
        self.jobs.append(_Job(model, texts, fut, explain, cost))
        self.waiting_texts += cost
        self.metrics.queue_depth.set(self.waiting_texts)
        self.wakeup.set()
        return fut

    def _take(self) -> list[_Job]:
        """The next micro-batch: jobs in arrival order up to max_batch_texts (one job if batching is off)."""
        taken: list[_Job] = []
        n = 0
        while self.jobs:
            job = self.jobs[0]
            alone = job.explain is not None or (taken and taken[0].explain is not None)  # explanations run one job at a time
            if taken and (alone or not self.settings.batching or n + len(job.texts) > self.settings.max_batch_texts):
                break
            self.jobs.popleft()
            self.waiting_texts -= job.cost
            if job.future.done():  # timed out or cancelled while waiting
                continue
            taken.append(job)
            n += len(job.texts)
        self.metrics.queue_depth.set(self.waiting_texts)
        return taken

    async def _run(self) -> None:
        while True:
            if not self.jobs:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.settings.batching and self.settings.max_wait_ms > 0:
                await asyncio.sleep(self.settings.max_wait_ms / 1000)  # let concurrent requests join
            by_model: dict[str, list[_Job]] = {}
            for job in self._take():
                by_model.setdefault(job.model, []).append(job)
            for name, jobs in by_model.items():
                await self._answer(name, jobs)

    async def _answer(self, name: str, jobs: list[_Job]) -> None:
        """One model call for all `jobs`; each gets its own rows back, or the error."""
        texts = [t for job in jobs for t in job.texts]
        explain = jobs[0].explain
        if explain is None:
            self.metrics.batch_texts.observe(len(texts))
        try:
            work = (self._predict, name, texts) if explain is None else (self._explain, name, texts, explain)
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, *work)
        except Exception as e:  # noqa: BLE001 - reported to the waiting requests, logged here
            log.exception("model call failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            part = probs[start : start + len(job.texts)]
            start += len(job.texts)
            if not job.future.done():
                job.future.set_result(part)

    def _predict(self, name: str, texts: list[str]) -> np.ndarray:
        clf = self.models[name].classifier
        return clf.predict_proba(texts, max_tokens=self.settings.max_tokens, batch_size=64)

    def _explain(self, name: str, texts: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        # Classifier.explain predicts first, through the backend, which also activates a shared base's adapter.
        return [e.to_dict() for e in self.models[name].classifier.explain(texts, **options)]
