"""The service's settings and the guard in front of every request: body-size limit, request metrics.

Nothing here imports torch or FastAPI, so `sentilora serve --help` reads its defaults from
`ServeSettings` without loading the model stack (see cli.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """How `sentilora serve` runs; each field is a `--option` of the same name."""

    max_texts: int = 64  # texts per request
    max_chars: int = 20_000  # characters per text
    max_body_bytes: int = 2_000_000  # request body
    queue_texts: int = 1024  # texts waiting for the model, all requests together; beyond: 503
    timeout_s: float = 30.0  # per request, queue wait included; beyond: 504
    batching: bool = True  # False: one request per model call (for comparison)
    max_wait_ms: float = 2.0  # how long the batcher waits for company once a request arrives
    # padded tokens per forward pass: predict.DEFAULT_MAX_TOKENS, written out because importing
    # predict would load torch into every CLI command (tests/test_serve.py pins the two together)
    max_tokens: int = 8192
    max_batch_texts: int = 256  # texts per micro-batch (the engine splits it under max_tokens)
    api_key: str | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_length: int | None = None  # tokens read per text; None = each bundle's prediction length


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


class Guard:
    """ASGI middleware: refuses bodies over the size limit (413) before anything parses them, counts
    requests by route and status, times them, and turns an escaped exception into a bare 500.

    A plain ASGI class, because Starlette's BaseHTTPMiddleware costs a task and a stream per request.
    """

    UNTIMED = ("/metrics", "/healthz", "/readyz")
    BODY_METHODS = ("POST", "PUT", "PATCH")

    def __init__(self, app: Any, *, settings: ServeSettings, metrics: Metrics, routes: Callable[[], list[str]]) -> None:
        self.app, self.settings, self.metrics, self.routes = app, settings, metrics, routes
        self._known: set[str] | None = None

    def _label(self, path: str) -> str:
        """The metrics label: the route itself, or "other" (random paths must not grow the label set)."""
        if self._known is None:
            self._known = set(self.routes())
        return path if path in self._known else "other"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        route = self._label(scope["path"])
        status = {"code": 500, "started": False}

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        if scope["method"] in self.BODY_METHODS:
            try:
                body = await self._read_body(scope, receive)
            except _ClientGone:
                return
            if body is None:
                await self._refuse_large_body(route, send)
                return
            receive = _replay(body, receive)
        try:
            await self.app(scope, receive, send_and_note)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s", route)
            self.metrics.errors.labels(reason="internal").inc()
            if not status["started"]:
                await _reply(send, 500, {"error": "internal server error"})
        finally:
            if route not in self.UNTIMED:
                self.metrics.latency.labels(route=route).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()

    async def _read_body(self, scope: dict, receive: Any) -> bytes | None:
        """The whole body, or None once it is over the limit (a declared Content-Length over it: unread)."""
        limit = self.settings.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return None
        return b"".join(chunks)

    async def _refuse_large_body(self, route: str, send: Any) -> None:
        limit = self.settings.max_body_bytes
        self.metrics.errors.labels(reason="body_too_large").inc()
        self.metrics.requests.labels(route=route, status="413").inc()
        await _reply(send, 413, {"error": f"request body is larger than {limit} bytes", "limit": "max_body_bytes",
                                 "value": limit})


class _ClientGone(Exception):
    """The client disconnected while sending its body: nobody is left to answer."""


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands the app the body already read, then defers to the real one."""
    replayed = False

    async def inner_receive() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return inner_receive


async def _reply(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
