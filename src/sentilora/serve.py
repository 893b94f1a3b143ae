"""The HTTP service: FastAPI + uvicorn over the shared prediction engine, with dynamic micro-batching.

    sentilora serve RUN_DIR [NAME=RUN_DIR ...] [--host 127.0.0.1] [--port 8000]

- Models and micro-batching: batcher.py (adapters on one base share its weights; requests wait in
  one bounded queue for one engine call per model).
- Limits: texts per request, characters per text, body bytes (413/422 with the limit and its
  value); a full queue answers 503 with Retry-After; a per-request timeout answers 504.
- Safety: binds 127.0.0.1 by default; with SENTILORA_API_KEY set, every route but /healthz and
  /readyz (and the static page, which holds no data) needs `Authorization: Bearer KEY` or
  `X-API-Key: KEY`, and /readyz names the models only to a caller with the key; binding a
  non-loopback address without a key is refused. Responses never carry tracebacks or the models'
  paths on disk. Weights load from safetensors only; no remote code.
- Lifecycle: /readyz is 503 until every model has answered a warm-up call; on SIGTERM it turns 503
  at once, new requests are refused, in-flight ones finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from sentilora.bundle import Manifest, sentilora_version
from sentilora.errors import ConfigError

try:
    from fastapi import Depends, FastAPI, HTTPException, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ConfigError(f"the server needs its extra: pip install 'sentilora[serve]' ({e.name} is missing).") from None
from sentilora.batcher import Batcher, QueueFull, Served, load_models, parse_model_args
from sentilora.guard import Guard, Metrics, ServeSettings
from sentilora.predict import Classifier

__all__ = ["Batcher", "Metrics", "QueueFull", "ServeSettings", "Served", "create_app", "load_models",
           "parse_model_args", "serve"]

log = logging.getLogger(__name__)

API_KEY_ENV = "SENTILORA_API_KEY"
WARMUP_TEXT = "A warm-up sentence for the model."


# ---- the app -------------------------------------------------------------------------------------


class ClassifyRequest(BaseModel):
    texts: list[str] = Field(description="Texts to classify (1 to --max-texts, each up to --max-chars characters).")
    model: str | None = Field(default=None, description="Model name from /v1/models; default: the first one.")


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    model: str


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]


class ExplainRequest(ClassifyRequest):
    target: str | None = Field(default=None, description="Explain this label instead of the predicted one.")
    method: Literal["integrated_gradients", "grad_x_input"] = Field(
        default="integrated_gradients", description="integrated_gradients (exact up to `steps`) or grad_x_input (one pass).")
    steps: int = Field(default=20, ge=1, le=64, description="Interpolation points for integrated gradients.")


class WordScore(BaseModel):
    start: int
    end: int
    word: str
    score: float | None = Field(description="Contribution to the target's logit; null: cut by truncation, never read.")


class Explanation(BaseModel):
    text: str
    target: str
    predicted: str
    method: str
    steps: int
    logit: float
    baseline_logit: float
    gap: float
    words: list[WordScore]
    model: str


class ExplainResponse(BaseModel):
    explanations: list[Explanation]


class ErrorBody(BaseModel):
    error: str
    limit: str | None = None
    value: int | None = None


@dataclass
class Service:
    """What the routes share (as `app.state.sentilora`): settings, metrics, the models and the lifecycle."""

    settings: ServeSettings
    metrics: Metrics
    models: dict[str, Served] = field(default_factory=dict)
    batcher: Batcher | None = None
    ready: bool = False
    draining: bool = False


def create_app(models: dict[str, Served] | dict[str, str], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app. `models` are loaded `Served` objects, or NAME -> path (loaded at startup)."""
    service = Service(settings or ServeSettings(), Metrics())
    app = FastAPI(
        title="sentilora",
        summary="Text classification with LoRA-tuned encoders",
        description="Classify texts with fine-tuned models. Send `Authorization: Bearer KEY` (or `X-API-Key: KEY`) "
                    "when the server has an API key.",
        version=sentilora_version(),
        lifespan=functools.partial(_lifespan, models=models),
    )
    app.state.sentilora = service
    app.state.metrics = service.metrics
    # Wraps routing and validation, so an oversized body is refused before anything parses it.
    app.add_middleware(Guard, settings=service.settings, metrics=service.metrics,
                       routes=lambda: [r.path for r in app.routes])
    _add_error_handlers(app)
    _add_routes(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, *, models: dict[str, Served] | dict[str, str]) -> AsyncIterator[None]:
    """Load (unless given loaded) and warm up every model, run the batcher; stop it on the way out."""
    service: Service = app.state.sentilora
    loaded = models if all(isinstance(v, Served) for v in models.values()) else None
    if loaded is None:
        loaded = await asyncio.to_thread(load_models, dict(models), service.settings)  # type: ignore[arg-type]
    service.models = loaded
    batcher = service.batcher = Batcher(loaded, service.settings, service.metrics)
    batcher.start()
    for name in loaded:  # warm-up: readiness means every model has answered once
        await asyncio.wait_for(batcher.submit(name, [WARMUP_TEXT]), timeout=max(60.0, service.settings.timeout_s))
    service.ready = True
    log.info("ready: %s", ", ".join(loaded))
    try:
        yield
    finally:
        service.ready = False
        await batcher.stop()


def _service(request: Request) -> Service:
    return request.app.state.sentilora


# ---- access --------------------------------------------------------------------------------------

# Declared through fastapi.security so /openapi.json (and /docs) list both ways of sending the key.
_BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                     description=f"`Authorization: Bearer KEY`, KEY as in ${API_KEY_ENV} on the server.")
_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="apiKey", auto_error=False,
                        description=f"`X-API-Key: KEY`, KEY as in ${API_KEY_ENV} on the server.")


def key_matches(expected: str | None, bearer: HTTPAuthorizationCredentials | None, header: str | None) -> bool:
    """True when the server has no key, or the caller sent it (a Bearer token wins over X-API-Key)."""
    if not expected:
        return True
    given = bearer.credentials if bearer is not None else header or ""
    return hmac.compare_digest(given.encode(), expected.encode())  # constant time: no guessing by timing


async def require_key(request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
                      header: Annotated[str | None, Security(_API_KEY)]) -> None:
    if not key_matches(_service(request).settings.api_key, bearer, header):
        raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer KEY",
                            headers={"WWW-Authenticate": "Bearer"})


async def _holds_key(request: Request) -> bool:
    """The same check for an open route that only shows more to a key holder (so not in its OpenAPI entry)."""
    return key_matches(_service(request).settings.api_key, await _BEARER(request), await _API_KEY(request))


# ---- routes --------------------------------------------------------------------------------------


def _add_routes(app: FastAPI) -> None:
    keyed = {"dependencies": [Depends(require_key)], "responses": {401: {"model": ErrorBody}}}
    app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")(healthz)
    app.get("/readyz", tags=["operations"], summary="Readiness: models loaded and warmed up, not shutting down",
            responses={503: {"model": ErrorBody}})(readyz)
    app.get("/metrics", tags=["operations"], summary="Prometheus metrics", **keyed)(prometheus_metrics)
    app.get("/v1/models", tags=["classify"], summary="The models this server answers with", **keyed)(list_models)
    errors = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 503, 504)}
    app.post("/v1/classify", tags=["classify"], summary="Classify texts", response_model=ClassifyResponse,
             dependencies=keyed["dependencies"], responses=errors)(classify)
    app.post("/v1/explain", tags=["classify"], summary="Which words drove each prediction", response_model=ExplainResponse,
             dependencies=keyed["dependencies"], responses=errors)(explain)
    app.get("/", include_in_schema=False)(page)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request):
    service = _service(request)
    if not service.ready or service.draining:
        return JSONResponse({"error": "shutting down" if service.draining else "loading models"}, status_code=503)
    if await _holds_key(request):  # the names are /v1/models' business, which needs the key
        return {"status": "ready", "models": list(service.models)}
    return {"status": "ready"}


async def prometheus_metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def list_models(request: Request) -> dict[str, Any]:
    loaded = _service(request).models
    return {"default": next(iter(loaded), None), "models": [s.info() for s in loaded.values()]}


async def classify(req: ClassifyRequest, request: Request):
    name, answer = await _run(req, request)
    if isinstance(answer, JSONResponse):
        return answer
    # A ready Response skips FastAPI's re-validation of the output (response_model still documents it).
    return JSONResponse({"predictions": _predictions(_service(request).models[name].classifier, name, answer)})


async def explain(req: ExplainRequest, request: Request):
    service = _service(request)
    name = req.model or next(iter(service.models), "")
    served = service.models.get(name)
    if served is not None:
        if served.classifier.model is None:
            return _error(request, 400, f"model '{name}' is an ONNX export: explanations need a PyTorch model",
                          reason="not_explainable")
        if req.target is not None and req.target not in served.classifier.label_names:
            return _error(request, 422, f"target '{req.target}' is not one of the labels of '{name}': "
                          f"{', '.join(served.classifier.label_names)}", reason="invalid")
    options = {"target": req.target, "method": req.method, "steps": req.steps}
    name, answer = await _run(req, request, explain=options)
    if isinstance(answer, JSONResponse):
        return answer
    return JSONResponse({"explanations": [{**e, "model": name} for e in answer]})


async def _run(req: ClassifyRequest, request: Request, *, explain: dict[str, Any] | None = None) -> tuple[str, Any]:
    """Checks, then the texts through the batcher: (model name, its answer), or (name, the error response)."""
    service = _service(request)
    name = req.model or next(iter(service.models))
    if service.draining or not service.ready:
        return name, _error(request, 503, "server is shutting down" if service.draining else "models are still loading",
                            reason="not_ready", headers={"Retry-After": "5"})
    if name not in service.models:
        return name, _error(request, 404, f"unknown model '{name}'; available: {', '.join(service.models)}",
                            reason="unknown_model")
    if (refusal := _check_texts(request, req.texts)) is not None:
        return name, refusal
    try:
        fut = service.batcher.submit(name, list(req.texts), explain=explain)
    except QueueFull:
        return name, _error(request, 503, "server is busy (queue full); retry shortly", reason="queue_full",
                            headers={"Retry-After": "1"})
    try:
        answer = await asyncio.wait_for(fut, timeout=service.settings.timeout_s)
    except asyncio.TimeoutError:
        return name, _error(request, 504, f"request timed out after {service.settings.timeout_s:g} s", reason="timeout")
    service.metrics.texts.labels(model=name).inc(len(req.texts))
    return name, answer


def _check_texts(request: Request, texts: list[str]) -> JSONResponse | None:
    """The 422 for texts over the limits or without words; None when they are fine."""
    limits = _service(request).settings
    if not texts:
        return _error(request, 422, "texts is empty; send 1 or more texts", reason="invalid", limit="min_texts", value=1)
    if len(texts) > limits.max_texts:
        return _error(request, 422, f"too many texts: {len(texts)} > {limits.max_texts} per request",
                      reason="too_many_texts", limit="max_texts", value=limits.max_texts)
    for i, t in enumerate(texts):
        if len(t) > limits.max_chars:
            return _error(request, 422, f"texts[{i}] has {len(t)} characters; the limit is {limits.max_chars}",
                          reason="text_too_long", limit="max_chars", value=limits.max_chars)
        if not t.strip():
            return _error(request, 422, f"texts[{i}] is empty; every text needs some words", reason="empty_text")
    return None


def _predictions(clf: Classifier, name: str, probs: np.ndarray) -> list[dict[str, Any]]:
    names = clf.label_names
    return [{"label": label, "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}, "model": name}
            for label, row in zip(clf.decide(probs), probs)]


async def page() -> HTMLResponse:
    return HTMLResponse((Path(__file__).parent / "resources" / "serve_page.html").read_text(encoding="utf-8"))


# ---- errors --------------------------------------------------------------------------------------


def _error(request: Request, status: int, message: str, *, reason: str, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    """The one error shape, {"error", "limit"?, "value"?}, counted by reason."""
    _service(request).metrics.errors.labels(reason=reason).inc()
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crashed)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return _error(request, 400, "request body is not valid JSON", reason="bad_json")
    where = ", ".join(".".join(str(p) for p in e.get("loc", ()) if p != "body") + f": {e.get('msg')}" for e in errs[:3])
    return _error(request, 422, f"invalid request: {where}", reason="invalid")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(request, exc.status_code, str(exc.detail), reason=f"http_{exc.status_code}",
                  headers=getattr(exc, "headers", None))


async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return _error(request, 500, "internal server error", reason="internal")


# ---- running it ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(specs: dict[str, str], *, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          log_level: str = "info", on_checked: Callable[[], None] | None = None) -> int:
    """Load the models, serve until SIGTERM/SIGINT, drain, return 0. What can be checked before the
    models load (the API key, the bundles, the port) is, and then `on_checked` is called."""
    import uvicorn

    settings = settings or ServeSettings()
    if settings.api_key is None:
        settings.api_key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and not settings.api_key:
        raise ConfigError(
            f"refusing to bind {host} (reachable from other machines) without an API key: set {API_KEY_ENV}, "
            "or bind 127.0.0.1."
        )
    for path in specs.values():
        Manifest.read(path)  # fail fast, before the port opens, on a bad path
    _check_port(host, port)
    if on_checked:
        on_checked()
    app = create_app(specs, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=25,
                            access_log=False, server_header=False)
    server = _server_class()(config, app)
    server.run()
    return 0


def _check_port(host: str, port: int) -> None:
    """A clear error before the models load (a minute for several) when `host:port` cannot be bound:
    uvicorn would only find out after loading them. Bound the way uvicorn binds (SO_REUSEADDR)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}. Pick another --port "
                              "(or stop what is using it).") from None


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, plus: readiness turns 503 the moment a stop signal arrives, and a stop by
        signal exits 0 once drained (uvicorn would re-raise the signal and die by it)."""

        def __init__(self, config: uvicorn.Config, app: Any) -> None:
            super().__init__(config)
            self.sentilora_app = app

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.sentilora_app.state.sentilora.draining = True
            super().handle_exit(sig, frame)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._captured_signals.clear()

    return Server
