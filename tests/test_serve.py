"""The HTTP service through FastAPI's TestClient (lifespan included): two adapters on one base model."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from sentilora import Classifier
from sentilora.errors import ConfigError
from sentilora.serve import Batcher, Metrics, QueueFull, ServeSettings, create_app, load_models, parse_model_args, serve

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

TEXTS = ["The movie was great and wonderful.", "Awful, boring, the worst plot.", "fine", "It was okay, not more."]


@pytest.fixture(scope="module")
def loaded(two_runs):
    return load_models(two_runs, ServeSettings(precision="fp32"))


def _client(loaded, **settings) -> TestClient:
    return TestClient(create_app(loaded, ServeSettings(precision="fp32", **settings)))


def test_adapters_share_the_base_and_answer_like_standalone_models(two_runs, loaded):
    a, b = loaded["a"].classifier, loaded["b"].classifier
    assert a.model is b.model, "two adapters on one base must share one model object"
    assert loaded["a"].kind == loaded["b"].kind == "adapter (shared base)"
    with _client(loaded) as client:
        got = {}
        for name in ("a", "b"):
            r = client.post("/v1/classify", json={"texts": TEXTS, "model": name})
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            assert [p["model"] for p in preds] == [name] * len(TEXTS)
            got[name] = np.array([[p["probabilities"][k] for k in ("negative", "positive")] for p in preds])
            alone = Classifier.load(two_runs[name], precision="fp32", merge=False)
            np.testing.assert_allclose(got[name], alone.predict_proba(TEXTS), atol=1e-5)
            assert [p["label"] for p in preds] == alone.predict(TEXTS)
        assert np.abs(got["a"] - got["b"]).max() > 1e-3, "both names answered with the same adapter"
        # the default model is the first one given
        r = client.post("/v1/classify", json={"texts": TEXTS[:1]})
        assert r.json()["predictions"][0]["model"] == "a"


def test_models_health_ready_metrics(loaded):
    with _client(loaded) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["status"] == "ready"
        models = client.get("/v1/models").json()
        assert models["default"] == "a" and [m["name"] for m in models["models"]] == ["a", "b"]
        assert models["models"][0]["labels"] == ["negative", "positive"]
        client.post("/v1/classify", json={"texts": TEXTS})
        client.post("/v1/classify", json={"texts": []})
        text = client.get("/metrics").text
        assert 'sentilora_requests_total{route="/v1/classify",status="200"} 1.0' in text
        assert 'sentilora_requests_total{route="/v1/classify",status="422"} 1.0' in text
        assert "sentilora_request_seconds_bucket" in text and "sentilora_batch_texts_count" in text
        assert "sentilora_queue_texts 0.0" in text
        assert 'sentilora_texts_total{model="a"} 4.0' in text


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b'{"texts": ["good", ', 400, "not valid JSON"),
        (b'{"texts": "just a string"}', 422, "texts"),
        (b'{"texts": [1, 2]}', 422, "texts"),
        (b'{"texts": []}', 422, "texts is empty"),
        (b'{"texts": ["   "]}', 422, "texts[0] is empty"),
        (b'{"texts": ["good"], "model": "nope"}', 404, "unknown model 'nope'; available: a, b"),
        (json.dumps({"texts": ["x"] * 9}).encode(), 422, "too many texts: 9 > 8"),
        (json.dumps({"texts": ["y" * 101]}).encode(), 422, "the limit is 100"),
        (json.dumps({"texts": ["z" * 5000]}).encode(), 413, "larger than 4096 bytes"),
        (b'[1, 2, 3]', 422, "invalid request"),
    ],
    ids=["bad-json", "wrong-type", "wrong-item-type", "empty-list", "blank-text", "unknown-model", "too-many",
         "too-long", "oversize-body", "not-an-object"],
)
def test_bad_requests_get_the_right_status(loaded, body, status, needle):
    with _client(loaded, max_texts=8, max_chars=100, max_body_bytes=4096) as client:
        r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert needle in r.json()["error"]
        assert "Traceback" not in r.text
        if status in (413, 422) and "limit" in r.json():
            assert isinstance(r.json()["value"], int)
        # and the server keeps serving
        assert client.post("/v1/classify", json={"texts": ["good"]}).status_code == 200


def test_api_key(loaded):
    with _client(loaded, api_key="s3cret") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        for path in ("/v1/models", "/metrics"):
            r = client.get(path)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/classify", json={"texts": ["x"]}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/classify", json={"texts": ["x"]}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/classify", json={"texts": ["x"]}, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_non_loopback_needs_a_key(two_runs, monkeypatch):
    monkeypatch.delenv("SENTILORA_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="without an API key"):
        serve({"a": two_runs["a"]}, host="0.0.0.0", port=0)


def test_a_port_in_use_is_refused_before_the_models_load(two_runs, monkeypatch):
    import socket

    from sentilora import serve as S

    monkeypatch.setattr(S, "create_app", lambda *a, **k: pytest.fail("the models were loaded"))
    checked = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*Pick another --port"):
            serve({"a": two_runs["a"]}, host="127.0.0.1", port=port, on_checked=lambda: checked.append(1))
    assert not checked  # nothing announced "serving"


def test_full_queue_is_503_with_retry_after(loaded):
    with _client(loaded, queue_texts=2) as client:
        r = client.post("/v1/classify", json={"texts": ["a", "b", "c"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "queue full" in r.json()["error"]
        assert client.post("/v1/classify", json={"texts": ["a", "b"]}).status_code == 200


def test_page_is_served(loaded):
    with _client(loaded) as client:
        r = client.get("/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "/v1/classify" in r.text and "<textarea" in r.text
        assert client.get("/openapi.json").json()["paths"]["/v1/classify"]["post"]


def test_parse_model_args():
    assert parse_model_args(["runs/x", "b=runs/y"]) == {"x": "runs/x", "b": "runs/y"}
    with pytest.raises(ConfigError, match="twice"):
        parse_model_args(["a=1", "a=2"])
    with pytest.raises(ConfigError, match="at least one model"):
        parse_model_args([])


# ---- the micro-batcher itself ---------------------------------------------------------------------


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_share_model_calls_and_keep_their_own_results(loaded, batching):
    settings = ServeSettings(batching=batching, max_wait_ms=20)
    metrics = Metrics()
    jobs = [("a", TEXTS[:2]), ("b", TEXTS[1:]), ("a", TEXTS[3:]), ("a", TEXTS), ("b", TEXTS[:1])]

    async def main():
        batcher = Batcher(loaded, settings, metrics)
        batcher.start()
        try:
            futures = [batcher.submit(m, t) for m, t in jobs]
            return await asyncio.gather(*futures)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for (name, texts), probs in zip(jobs, results):
        np.testing.assert_allclose(probs, loaded[name].classifier.predict_proba(texts), atol=1e-5)
    calls = metrics.batch_texts.collect()[0].samples
    count = next(s.value for s in calls if s.name.endswith("_count"))
    # batched: one model call per model (a, b); unbatched: one call per request
    assert count == (2 if batching else len(jobs))


def test_batcher_bounds_its_queue(loaded):
    async def main():
        batcher = Batcher(loaded, ServeSettings(queue_texts=3), Metrics())  # not started: nothing drains
        batcher.submit("a", ["x", "y"])
        with pytest.raises(QueueFull):
            batcher.submit("a", ["x", "y"])
        batcher.submit("a", ["z"])
        await batcher.stop()

    asyncio.run(main())


def test_stop_signal_flips_readiness_at_once(loaded):
    import signal

    import uvicorn

    from sentilora.serve import _server_class

    app = create_app(loaded, ServeSettings(precision="fp32"))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        server = _server_class()(uvicorn.Config(app), app)
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit and not server._captured_signals  # drains, then exits 0 (no re-raised signal)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"] == "shutting down"
        r = client.post("/v1/classify", json={"texts": ["x"]})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert client.get("/healthz").status_code == 200


def test_unknown_paths_share_one_metrics_label(loaded):
    with _client(loaded) as client:
        for i in range(5):
            assert client.get(f"/no/such/path/{i}").status_code == 404
        text = client.get("/metrics").text
        assert 'sentilora_requests_total{route="other",status="404"} 5.0' in text
        assert "/no/such/path" not in text


# ---- access and disclosure ------------------------------------------------------------------------


def test_openapi_documents_the_api_key_schemes(loaded):
    with _client(loaded, api_key="s3cret") as client:
        spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(s for s in schemes.values() if s["type"] == "http").items()
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        s for s in schemes.values() if s["type"] == "apiKey").items()
    for path, method in (("/v1/classify", "post"), ("/v1/models", "get"), ("/metrics", "get")):
        assert {name for req in spec["paths"][path][method]["security"] for name in req} == set(schemes), path
    for path in ("/healthz", "/readyz"):  # open to probes
        assert "security" not in spec["paths"][path]["get"]


def test_readyz_names_the_models_only_to_key_holders(loaded):
    with _client(loaded, api_key="s3cret") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            r = client.get("/readyz", headers=headers)
            assert r.status_code == 200 and r.json() == {"status": "ready"}, headers
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            assert client.get("/readyz", headers=headers).json() == {"status": "ready", "models": ["a", "b"]}
    with _client(loaded) as client:  # no key configured: everyone may see the names, as on /v1/models
        assert client.get("/readyz").json() == {"status": "ready", "models": ["a", "b"]}


def test_models_list_does_not_reveal_server_paths(two_runs, loaded):
    with _client(loaded) as client:
        r = client.get("/v1/models")
    assert r.status_code == 200
    for m in r.json()["models"]:
        assert "path" not in m and {"name", "kind", "labels", "base_model", "max_length"} <= set(m)
    for path in two_runs.values():
        assert path not in r.text


def test_serve_cli_takes_its_defaults_from_serve_settings():
    import ast
    import inspect
    import textwrap

    from typer.main import get_command
    from typer.testing import CliRunner

    from sentilora import cli
    from sentilora.predict import DEFAULT_MAX_TOKENS

    fields = {"max_texts": "max_texts", "max_chars": "max_chars", "max_body_bytes": "max_body_bytes",
              "queue_texts": "queue_texts", "timeout": "timeout_s", "max_wait_ms": "max_wait_ms",
              "max_tokens": "max_tokens", "precision": "precision", "threads": "threads", "max_length": "max_length"}
    defaults = ServeSettings()
    assert defaults.max_tokens == DEFAULT_MAX_TOKENS  # written out in guard.py, which must not import torch
    params = {p.name: p for p in get_command(cli.app).commands["serve"].params}
    for option, field in fields.items():
        assert params[option].default == getattr(defaults, field), option
    assert params["no_batching"].default is (not defaults.batching)
    # declared once: the command reads them from ServeSettings instead of repeating the values
    fn = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cli.serve)))).body[0]
    args = fn.args.args + fn.args.kwonlyargs
    given = dict(zip([a.arg for a in fn.args.args][-len(fn.args.defaults):], fn.args.defaults))
    given |= {a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None}
    assert {a.arg for a in args} >= set(fields)
    literal = [o for o in [*fields, "no_batching"] if isinstance(given[o], ast.Constant) and given[o].value is not None]
    assert literal == [], f"serve options repeating ServeSettings defaults as literals: {literal}"
    shown = CliRunner().invoke(cli.app, ["serve", "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"}).output
    for text in (f"[default: {defaults.max_texts}]", f"[default: {defaults.max_body_bytes}]",
                 f"[default: {defaults.max_tokens}]", f"[default: {defaults.precision}]"):
        assert text in shown, text


# ---- explanations -------------------------------------------------------------------------------


def test_explain_answers_per_adapter_like_the_api(two_runs, loaded):
    with _client(loaded) as client:
        for name in ("a", "b"):
            r = client.post("/v1/explain", json={"texts": TEXTS[:2], "model": name, "steps": 8})
            assert r.status_code == 200, r.text
            got = r.json()["explanations"]
            alone = Classifier.load(two_runs[name], precision="fp32", merge=False).explain(TEXTS[:2], steps=8)
            for e, ref in zip(got, alone):
                assert e["model"] == name and e["predicted"] == ref.predicted and e["method"] == "integrated_gradients"
                assert [w["word"] for w in e["words"]] == [w.word for w in ref.words]
                np.testing.assert_allclose([w["score"] for w in e["words"]], [w.score for w in ref.words], atol=1e-4)
        r = client.post("/v1/explain", json={"texts": TEXTS[:1], "target": "positive", "method": "grad_x_input"})
        assert r.status_code == 200 and r.json()["explanations"][0]["target"] == "positive"


@pytest.mark.parametrize("body, status, needle", [
    ({"texts": TEXTS[:1], "target": "meh"}, 422, "not one of the labels"),
    ({"texts": TEXTS[:1], "steps": 500}, 422, "steps"),
    ({"texts": TEXTS[:1], "method": "saliency"}, 422, "method"),
    ({"texts": []}, 422, "texts is empty"),
    ({"texts": TEXTS[:1], "model": "zzz"}, 404, "unknown model"),
])
def test_explain_refuses_bad_requests(loaded, body, status, needle):
    with _client(loaded) as client:
        r = client.post("/v1/explain", json=body)
        assert r.status_code == status and needle in r.text, r.text


def test_an_explained_text_costs_more_of_the_queue(loaded):
    async def main():
        batcher = Batcher(loaded, ServeSettings(queue_texts=100), Metrics())  # not started: nothing drains
        batcher.submit("a", ["x"], explain={"method": "integrated_gradients", "steps": 20})  # 60 units
        with pytest.raises(QueueFull):
            batcher.submit("a", ["x"], explain={"method": "integrated_gradients", "steps": 20})
        batcher.submit("a", ["y"] * 40)  # plain texts still fit
        await batcher.stop()

    asyncio.run(main())
    with _client(loaded, queue_texts=50) as client:
        r = client.post("/v1/explain", json={"texts": ["a"], "steps": 20})
        assert r.status_code == 503 and "queue full" in r.json()["error"]
        assert client.post("/v1/explain", json={"texts": ["a"], "steps": 10}).status_code == 200
