"""The HTTP service: FastAPI + uvicorn over the shared prediction engine, with dynamic micro-batching.

    sentilora serve RUN_DIR [NAME=RUN_DIR ...] [--host 127.0.0.1] [--port 8000]

- Models: every NAME=PATH is a run bundle, a merged model or an ONNX export. Adapter runs trained
  on the same base model (same fingerprint, same number of classes) share one copy of its weights:
  the first is loaded, the others are added as further PEFT adapters and switched per batch.
- Micro-batching: requests go into one bounded queue; a single worker takes what is waiting (after
  at most `max_wait_ms`), groups it by model and makes one engine call per model. The engine sorts
  those texts by token length and cuts them under a token budget, so short texts batch many at a
  time and long ones are never padded to each other. Model calls run on one worker thread, so the
  event loop stays free for health checks, metrics and new requests.
- Limits: texts per request, characters per text, body bytes (413/422 with the limit and its
  value); a full queue answers 503 with Retry-After; a per-request timeout answers 504.
- Safety: binds 127.0.0.1 by default; with SENTILORA_API_KEY set, every route but /healthz and
  /readyz (and the static page, which holds no data) needs `Authorization: Bearer KEY` or
  `X-API-Key: KEY`; binding a non-loopback address without a key is refused. Error bodies never
  carry tracebacks. Weights load from safetensors only; no remote code.
- Lifecycle: /readyz is 503 until every model has answered a warm-up call; on SIGTERM it turns 503
  at once, new requests are refused, in-flight ones finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sentilora.batching import pick_device, pick_dtype
from sentilora.bundle import Manifest, add_adapter, load_bundle, sentilora_version
from sentilora.errors import ConfigError

try:
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ConfigError(f"the server needs its extra: pip install 'sentilora[serve]' ({e.name} is missing).") from None
from sentilora.predict import DEFAULT_MAX_TOKENS, Classifier, TorchBackend, inference_weights

log = logging.getLogger(__name__)

API_KEY_ENV = "SENTILORA_API_KEY"
WARMUP_TEXT = "A warm-up sentence for the model."


# ---- settings ------------------------------------------------------------------------------------


@dataclass
class ServeSettings:
    max_texts: int = 64  # texts per request
    max_chars: int = 20_000  # characters per text
    max_body_bytes: int = 2_000_000  # request body
    queue_texts: int = 1024  # texts waiting for the model, all requests together; beyond: 503
    timeout_s: float = 30.0  # per request, queue wait included; beyond: 504
    batching: bool = True  # False: one request per model call (for comparison)
    max_wait_ms: float = 2.0  # how long the batcher waits for company once a request arrives
    max_tokens: int = DEFAULT_MAX_TOKENS  # padded tokens per forward pass
    max_batch_texts: int = 256  # texts per micro-batch (the engine splits it under max_tokens)
    api_key: str | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_length: int | None = None  # tokens read per text; None = each bundle's prediction length


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
    name: str
    path: str
    kind: str  # "adapter", "adapter (shared base)", "merged", "onnx"
    classifier: Classifier

    def info(self) -> dict[str, Any]:
        man = self.classifier.manifest
        return {"name": self.name, "path": self.path, "kind": self.kind, "base_model": man.base_model,
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
            clf = Classifier(model, tok, manifests[name], backend=backend, max_length=settings.max_length)
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
    pass


@dataclass
class _Job:
    model: str
    texts: list[str]
    future: asyncio.Future


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

    def submit(self, model: str, texts: list[str]) -> asyncio.Future:
        if self.waiting_texts + len(texts) > self.settings.queue_texts:
            raise QueueFull
        fut = asyncio.get_running_loop().create_future()
        self.jobs.append(_Job(model, texts, fut))
        self.waiting_texts += len(texts)
        self.metrics.queue_depth.set(self.waiting_texts)
        self.wakeup.set()
        return fut

    def _take(self) -> list[_Job]:
        """The next micro-batch: jobs in arrival order up to max_batch_texts (one job if batching is off)."""
        taken: list[_Job] = []
        n = 0
        while self.jobs:
            job = self.jobs[0]
            if taken and (not self.settings.batching or n + len(job.texts) > self.settings.max_batch_texts):
                break
            self.jobs.popleft()
            self.waiting_texts -= len(job.texts)
            if job.future.done():  # timed out or cancelled while waiting
                continue
            taken.append(job)
            n += len(job.texts)
        self.metrics.queue_depth.set(self.waiting_texts)
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.jobs:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.settings.batching and self.settings.max_wait_ms > 0:
                await asyncio.sleep(self.settings.max_wait_ms / 1000)  # let concurrent requests join
            batch = self._take()
            by_model: dict[str, list[_Job]] = {}
            for job in batch:
                by_model.setdefault(job.model, []).append(job)
            for name, jobs in by_model.items():
                texts = [t for job in jobs for t in job.texts]
                self.metrics.batch_texts.observe(len(texts))
                try:
                    probs = await loop.run_in_executor(self.executor, self._predict, name, texts)
                except Exception as e:  # noqa: BLE001 - reported to the waiting requests, logged here
                    log.exception("model call failed")
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
                start = 0
                for job in jobs:
                    part = probs[start : start + len(job.texts)]
                    start += len(job.texts)
                    if not job.future.done():
                        job.future.set_result(part)

    def _predict(self, name: str, texts: list[str]) -> np.ndarray:
        clf = self.models[name].classifier
        return clf.predict_proba(texts, max_tokens=self.settings.max_tokens, batch_size=64)


# ---- metrics -------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of this app's own (tests build many apps in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("sentilora_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "sentilora_request_seconds", "Request latency (s)", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_texts = Histogram(
            "sentilora_batch_texts", "Texts per model call", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.queue_depth = Gauge("sentilora_queue_texts", "Texts waiting for the model", registry=self.registry)
        self.errors = Counter("sentilora_errors", "Requests answered with an error", ["reason"], registry=self.registry)
        self.texts = Counter("sentilora_texts", "Texts classified", ["model"], registry=self.registry)


# ---- the app -------------------------------------------------------------------------------------


class _Guard:
    """ASGI middleware: refuses bodies over the size limit (413) before anything parses them, counts
    requests by route and status, times them, and turns an escaped exception into a bare 500."""

    UNTIMED = ("/metrics", "/healthz", "/readyz")

    def __init__(self, app: Any, *, settings: ServeSettings, metrics: Metrics, routes: Any) -> None:
        self.app, self.settings, self.metrics, self.routes = app, settings, metrics, routes
        self._known: set[str] | None = None

    def _label(self, path: str) -> str:
        """The metrics label: the route itself, or "other" (random paths must not grow the label set)."""
        if self._known is None:
            self._known = set(self.routes())
        return path if path in self._known else "other"

    async def _reply(self, send: Any, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path, limit = self._label(scope["path"]), self.settings.max_body_bytes
        status = {"code": 500, "started": False}

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        too_big = {"error": f"request body is larger than {limit} bytes", "limit": "max_body_bytes", "value": limit}
        inner_receive = receive
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            body, more = b"", not (declared.isdigit() and int(declared) > limit)
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    break
            if len(body) > limit or (declared.isdigit() and int(declared) > limit):
                self.metrics.errors.labels(reason="body_too_large").inc()
                self.metrics.requests.labels(route=path, status="413").inc()
                await self._reply(send, 413, too_big)
                return
            replayed = False

            async def inner_receive() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

        try:
            await self.app(scope, inner_receive, send_and_note)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s", path)
            self.metrics.errors.labels(reason="internal").inc()
            if not status["started"]:
                await self._reply(send, 500, {"error": "internal server error"})
        finally:
            if path not in self.UNTIMED:
                self.metrics.latency.labels(route=path).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(route=path, status=str(status["code"])).inc()


class ClassifyRequest(BaseModel):
    texts: list[str] = Field(description="Texts to classify (1 to --max-texts, each up to --max-chars characters).")
    model: str | None = Field(default=None, description="Model name from /v1/models; default: the first one.")


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    model: str


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    error: str
    limit: str | None = None
    value: int | None = None


def create_app(models: dict[str, Served] | dict[str, str], settings: ServeSettings | None = None) -> Any:
    """The FastAPI app. `models` are loaded `Served` objects, or NAME -> path (loaded at startup)."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    state: dict[str, Any] = {"models": {}, "ready": False, "draining": False, "batcher": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = models if all(isinstance(v, Served) for v in models.values()) else None
        if loaded is None:
            loaded = await asyncio.to_thread(load_models, dict(models), settings)  # type: ignore[arg-type]
        state["models"] = loaded
        batcher = Batcher(loaded, settings, metrics)
        state["batcher"] = batcher
        batcher.start()
        for name in loaded:  # warm-up: readiness means every model has answered once
            fut = batcher.submit(name, [WARMUP_TEXT])
            await asyncio.wait_for(fut, timeout=max(60.0, settings.timeout_s))
        state["ready"] = True
        log.info("ready: %s", ", ".join(loaded))
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()

    app = FastAPI(
        title="sentilora",
        summary="Text classification with LoRA-tuned encoders",
        description="Classify texts with fine-tuned models. Send `Authorization: Bearer KEY` when the server has an API key.",
        version=sentilora_version(),
        lifespan=lifespan,
    )
    app.state.sentilora = state
    app.state.metrics = metrics

    def error(status: int, message: str, *, reason: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
        metrics.errors.labels(reason=reason).inc()
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    # Size limit before anything parses the body, plus request metrics: a plain ASGI middleware
    # (Starlette's BaseHTTPMiddleware costs a task and a stream per request).
    app.add_middleware(_Guard, settings=settings, metrics=metrics, routes=lambda: [r.path for r in app.routes])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error(400, "request body is not valid JSON", reason="bad_json")
        where = ", ".join(".".join(str(p) for p in e.get("loc", ()) if p != "body") + f": {e.get('msg')}" for e in errs[:3])
        return error(422, f"invalid request: {where}", reason="invalid")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), reason=f"http_{exc.status_code}", headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error(500, "internal server error", reason="internal")

    def require_key(request: Request) -> None:
        key = settings.api_key
        if not key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer KEY",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: models loaded and warmed up, not shutting down",
             responses={503: {"model": ErrorBody}})
    async def readyz():
        if state["ready"] and not state["draining"]:
            return {"status": "ready", "models": list(state["models"])}
        return JSONResponse({"error": "shutting down" if state["draining"] else "loading models"}, status_code=503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", dependencies=[Depends(require_key)],
             responses={401: {"model": ErrorBody}})
    async def prom() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["classify"], summary="The models this server answers with",
             dependencies=[Depends(require_key)], responses={401: {"model": ErrorBody}})
    async def list_models() -> dict[str, Any]:
        loaded = state["models"]
        return {"default": next(iter(loaded), None), "models": [s.info() for s in loaded.values()]}

    @app.post(
        "/v1/classify", tags=["classify"], summary="Classify texts", response_model=ClassifyResponse,
        dependencies=[Depends(require_key)],
        responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody},
                   413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody},
                   504: {"model": ErrorBody}},
    )
    async def classify(req: ClassifyRequest):
        loaded: dict[str, Served] = state["models"]
        if state["draining"] or not state["ready"]:
            return error(503, "server is shutting down" if state["draining"] else "models are still loading",
                         reason="not_ready", headers={"Retry-After": "5"})
        name = req.model or next(iter(loaded))
        if name not in loaded:
            return error(404, f"unknown model '{name}'; available: {', '.join(loaded)}", reason="unknown_model")
        if not req.texts:
            return error(422, "texts is empty; send 1 or more texts", reason="invalid", limit="min_texts", value=1)
        if len(req.texts) > settings.max_texts:
            return error(422, f"too many texts: {len(req.texts)} > {settings.max_texts} per request",
                         reason="too_many_texts", limit="max_texts", value=settings.max_texts)
        for i, t in enumerate(req.texts):
            if len(t) > settings.max_chars:
                return error(422, f"texts[{i}] has {len(t)} characters; the limit is {settings.max_chars}",
                             reason="text_too_long", limit="max_chars", value=settings.max_chars)
            if not t.strip():
                return error(422, f"texts[{i}] is empty; every text needs some words", reason="empty_text")
        try:
            fut = state["batcher"].submit(name, list(req.texts))
        except QueueFull:
            return error(503, "server is busy (queue full); retry shortly", reason="queue_full", headers={"Retry-After": "1"})
        try:
            probs = await asyncio.wait_for(fut, timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"request timed out after {settings.timeout_s:g} s", reason="timeout")
        clf = loaded[name].classifier
        labels = clf.decide(probs)
        metrics.texts.labels(model=name).inc(len(req.texts))
        names = clf.label_names
        # A ready Response skips FastAPI's re-validation of the output (response_model still documents it).
        return JSONResponse({"predictions": [
            {"label": lab, "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}, "model": name}
            for lab, row in zip(labels, probs)
        ]})

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_html())

    return app


def _page_html() -> str:
    return (Path(__file__).parent / "resources" / "serve_page.html").read_text(encoding="utf-8")


# ---- running it ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(specs: dict[str, str], *, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          log_level: str = "info") -> int:
    """Load the models, serve until SIGTERM/SIGINT, drain, return 0."""
    import uvicorn

    settings = settings or ServeSettings()
    if settings.api_key is None:
        settings.api_key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and not settings.api_key:
        raise ConfigError(
            f"refusing to bind {host} (reachable from other machines) without an API key: set {API_KEY_ENV}, "
            "or bind 127.0.0.1."
        )
    for name, path in specs.items():
        Manifest.read(path)  # fail fast, before the port opens, on a bad path
    app = create_app(specs, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=25,
                            access_log=False, server_header=False)
    server = _server_class()(config, app)
    server.run()
    return 0


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, plus: readiness turns 503 the moment a stop signal arrives, and a stop by
        signal exits 0 once drained (uvicorn would re-raise the signal and die by it)."""

        def __init__(self, config: uvicorn.Config, app: Any) -> None:
            super().__init__(config)
            self.sentilora_app = app

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.sentilora_app.state.sentilora["draining"] = True
            super().handle_exit(sig, frame)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._captured_signals.clear()

    return Server
