"""The real server: a uvicorn process on a free loopback port, spoken to over HTTP.

Covers what TestClient cannot: the CLI entry point, malformed requests over a real socket,
schema-driven fuzzing (schemathesis), graceful drain on SIGTERM, and the web page in a real
headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
REVIEW = "A wonderful, moving film with a great cast."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, models: dict[str, str], *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("SENTILORA_API_KEY", None)
        args = [f"{k}={v}" for k, v in models.items()]
        self.log = open(Path(models[next(iter(models))]).parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentilora", "serve", *args, "--port", str(self.port), "--precision", "fp32",
             "--log-level", "warning", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in 90 s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def runs(two_runs):
    return two_runs


@pytest.fixture(scope="module")
def server(runs):
    srv = Server(runs, "--max-texts", "8", "--max-body-bytes", "4096")
    yield srv
    srv.stop()


def test_bad_requests_over_http_then_keeps_serving(server):
    post = lambda body: httpx.post(server.url + "/v1/classify", content=body,  # noqa: E731
                                   headers={"content-type": "application/json"}, timeout=10)
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b'{"texts": 42}', 422, "texts"),
        (b'{"texts": []}', 422, "texts is empty"),
        (json.dumps({"texts": ["x" * 5000]}).encode(), 413, "larger than 4096 bytes"),
        (json.dumps({"texts": ["x"] * 9}).encode(), 422, "too many texts"),
        (b'{"texts": ["good"], "model": "zzz"}', 404, "unknown model 'zzz'"),
    ]
    for body, status, needle in cases:
        r = post(body)
        assert r.status_code == status, (body[:40], r.text)
        assert needle in r.json()["error"]
    r = post(json.dumps({"texts": [REVIEW, "Dull."], "model": "b"}).encode())
    assert r.status_code == 200
    assert [p["model"] for p in r.json()["predictions"]] == ["b", "b"]
    assert 'sentilora_requests_total{route="/v1/classify",status="400"} 1.0' in httpx.get(server.url + "/metrics").text


def test_fuzz_with_schemathesis(server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/classify", "/v1/models", "/healthz", "/readyz", "/metrics"}
    seen: list[int] = []
    for op in ops:
        @settings(max_examples=40 if op.path == "/v1/classify" else 5, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            response = case.call(base_url=server.url, timeout=20)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.body, response.text)

        check()
    assert 200 in seen and any(400 <= s < 500 for s in seen)
    assert httpx.get(server.url + "/readyz").status_code == 200  # no hang, still serving


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail, naming `what`, once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def queued_texts(url: str) -> float:
    metrics = httpx.get(url + "/metrics", timeout=5).text
    return float(re.search(r"^sentilora_queue_texts (\S+)$", metrics, re.MULTILINE).group(1))


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        # accepted in the instant before the listener closed, then dropped by uvicorn's shutdown
        # (seen as RemoteProtocolError and as ReadError, connection reset): not yet refusing; the
        # next poll sees the closed port
        return False
    return False


def test_sigterm_drains_in_flight_requests(runs):
    # a long batching wait holds the six requests in the queue, unanswered, while the signal lands
    srv = Server({"a": runs["a"]}, "--max-wait-ms", "3000")
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.post, srv.url + "/v1/classify", json={"texts": [f"{REVIEW} {i}"]}, timeout=30)
                       for i in range(6)]
            wait_for(lambda: queued_texts(srv.url) == 6, what="all six requests to wait in the queue")
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: refuses_connections(srv.url), what="the server to stop accepting connections")
            assert not any(f.done() for f in futures), "answered before the drain began: the drain went untested"
            with pytest.raises(httpx.ConnectError):  # new connections are refused while draining
                httpx.post(srv.url + "/v1/classify", json={"texts": ["late"]}, timeout=5)
            codes = [f.result().status_code for f in futures]
        assert codes == [200] * 6
        assert srv.proc.wait(30) == 0, srv.output()
    finally:
        srv.stop()


def test_web_page_in_headless_chromium(server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    url = server.url + "/?" + urllib.parse.urlencode({"text": REVIEW, "run": "1"})
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--virtual-time-budget=15000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'class="label"' in dom, dom[-2000:]
    assert "classified by a" in dom
    assert any(f'class="label">{lab}<' in dom for lab in ("negative", "positive"))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    subprocess.run([*flags, "--window-size=1000,700", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 1000
    # The "explain" toggle: the text comes back as one shaded span per word, in the page's legend's colours.
    explained = url + "&explain=1"
    dom = subprocess.run([*flags, "--dump-dom", explained], capture_output=True, text=True, timeout=120).stdout
    assert "words explained" in dom, dom[dom.find('id="status"'):][:300]
    words = re.findall(r'<span class="w (?:pos|neg)" title="[+-][\d.e-]+" style="background: rgba\([\d, .]+\);">([^<]+)</span>', dom)
    assert words == re.findall(r"\w+|[^\w\s]", REVIEW), dom[dom.find("<tbody>"):][:1500]
    subprocess.run([*flags, "--window-size=1000,700", f"--screenshot={ARTIFACTS / 'serve_page_explain.png'}", explained],
                   capture_output=True, timeout=120)
