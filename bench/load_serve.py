"""Load test of `sentilora serve` on loopback: micro-batching vs one request per model call.

    python bench/load_serve.py                    # 1/8/32 clients x 2 mixes x 2 modes x 60 s, then a 5-min soak (~20 min)
    python bench/load_serve.py --duration 20 --soak 60    # a quicker look (results go to bench/work/)

The model is MiniLM fine-tuned on P1 (bench/work/minilm-p1, trained on first use by
bench/infer_imdb.py's ensure_models). Each mode is a real server process (`sentilora serve`,
`--no-batching` for the unbatched one) started fresh; clients are asyncio tasks in this process,
each sending one text per request, back to back, for the duration. Two traffic mixes drawn from
the IMDB test split: full reviews, and short texts (each review's first sentence, cut to 150
characters). Requests refused with 503 + Retry-After count as refused, not as errors; any other
non-200 answer, exception or timeout is an error ("lost" = no answer at all).

Writes bench/results/load_serve-clients.json and load_serve-soak.json (BENCH.md shape) and the
README tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK_DIR, load_protocol, utc_now, write_results  # noqa: E402

BENCH = "load_serve"
CLIENTS = (1, 8, 32)
EXE = str(Path(sys.executable).with_name("sentilora"))


def texts(n: int = 2000) -> dict[str, list[str]]:
    _, ev, _ = load_protocol("p2")
    reviews = ev.sample(n=n, random_state=7)["text"].tolist()
    short = []
    for r in reviews:
        first = re.split(r"(?<=[.!?])\s|<br", r, maxsplit=1)[0].strip()
        short.append(first[:150] if len(first) > 3 else r[:150])
    return {"full reviews": reviews, "short texts": short}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProc:
    def __init__(self, run: Path, *, batching: bool, extra: Sequence[str] = ()) -> None:
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [EXE, "serve", f"p1={run}", "--port", str(self.port), "--log-level", "warning", *extra]
        if not batching:
            cmd.append("--no-batching")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.proc.kill()
        sys.exit("server not ready within 180 s")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


async def load(url: str, pool: list[str], clients: int, duration: float) -> dict[str, Any]:
    """`clients` tasks posting one text per request back to back for `duration` seconds.

    aiohttp, not httpx: the load generator shares the 2 cores with the server, and httpx's client
    cost 4.2 ms of CPU per request here (0.45 of a core at 107 req/s), which starved the server.
    """
    import aiohttp

    latencies: list[float] = []
    counts = {"ok": 0, "refused": 0, "errors": 0, "lost": 0}
    stop_at = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)

    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as http:
        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                text = pool[i % len(pool)]
                i += clients
                t0 = time.perf_counter()
                try:
                    async with http.post("/v1/classify", json={"texts": [text]}) as r:
                        await r.read()
                        status, retry = r.status, r.headers.get("retry-after")
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    counts["lost"] += 1
                    continue
                if status == 200:
                    counts["ok"] += 1
                    latencies.append(time.perf_counter() - t0)
                elif status == 503 and retry is not None:
                    counts["refused"] += 1
                    await asyncio.sleep(float(retry))
                else:
                    counts["errors"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else None

    return {"requests_per_s": round(counts["ok"] / wall, 2), "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), **counts, "seconds": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60, help="seconds per (mode, mix, clients) cell")
    ap.add_argument("--soak", type=float, default=300, help="soak seconds at 32 clients (0 = skip)")
    ap.add_argument("--settle", type=float, default=60, help="seconds of the soak's traffic before its start RSS is read")
    ap.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="client counts, comma-separated")
    ap.add_argument("--mixes", default="full,short", help="traffic mixes: full (reviews), short (first sentences)")
    ap.add_argument("--serve-args", default="", help='extra `sentilora serve` options for both modes, e.g. "--threads 1"')
    args = ap.parse_args()
    quick = args.duration < 60 or (0 < args.soak < 300) or args.mixes != "full,short" or bool(args.serve_args)
    extra = args.serve_args.split()
    from infer_imdb import RUN, ensure_models

    ensure_models()
    started = utc_now()
    all_mixes = texts()
    wanted_mixes = {"full": "full reviews", "short": "short texts"}
    mixes = {wanted_mixes[m]: all_mixes[wanted_mixes[m]] for m in args.mixes.split(",")}
    clients = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    for batching in (True, False):
        mode = "micro-batching" if batching else "unbatched (1 request per model call)"
        srv = ServerProc(RUN, batching=batching, extra=extra)
        try:
            for mix, pool in mixes.items():
                for n in clients:
                    res = asyncio.run(load(srv.url, pool, n, args.duration))
                    row = {"system": mode, "mix": mix, "clients": n, **res, "server_rss_mb": round(rss_mb(srv.proc.pid))}
                    print(row, flush=True)
                    rows.append(row)
        finally:
            code = srv.stop()
        if code != 0:
            sys.exit(f"server exited with {code} on SIGTERM")

    def cell(mode_prefix: str, mix: str, n: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["system"].startswith(mode_prefix) and r["mix"] == mix and r["clients"] == n), None)

    targets = []
    top = max(clients)
    sb, su = cell("micro", "short texts", top), cell("unbatched", "short texts", top)
    fb, fu = cell("micro", "full reviews", top), cell("unbatched", "full reviews", top)
    if sb and su:
        ratio = sb["requests_per_s"] / su["requests_per_s"]
        targets.append({"name": f"short texts, {top} clients: batched / unbatched requests/s", "value": round(ratio, 2),
                        "goal": ">= 2.5", "pass": ratio >= 2.5})
    if fb and fu:
        ratio = fb["requests_per_s"] / fu["requests_per_s"]
        targets.append({"name": f"full reviews, {top} clients: batched / unbatched requests/s", "value": round(ratio, 2),
                        "goal": ">= 1.0", "pass": ratio >= 1.0})
        p99 = fb["p99_ms"] / fu["p99_ms"]
        targets.append({"name": f"full reviews, {top} clients: batched / unbatched p99 latency", "value": round(p99, 2),
                        "goal": "<= 1.5", "pass": p99 <= 1.5})
    bad = sum(r["errors"] + r["lost"] for r in rows)
    targets.append({"name": "errors + lost requests, all cells", "value": bad, "goal": "0", "pass": bad == 0})
    out_dir = WORK_DIR if quick else None
    cmd = "python bench/load_serve.py " + " ".join(sys.argv[1:])
    path = write_results(BENCH, "clients", rows, targets, cmd, started, results_dir=out_dir)
    print(f"written to {path}")

    if args.soak > 0:
        started = utc_now()
        srv = ServerProc(RUN, batching=True, extra=extra)
        try:
            mixed = [t for pair in zip(all_mixes["full reviews"], all_mixes["short texts"]) for t in pair]
            # Warm up with the soak's own traffic first: the allocator and oneDNN's kernel cache grow to
            # the largest shapes they see, which is not a leak; the soak then shows whether RSS keeps growing.
            asyncio.run(load(srv.url, mixed, top, args.settle))
            series: list[float] = []

            async def sample_rss() -> None:
                while True:
                    await asyncio.sleep(30)
                    series.append(round(rss_mb(srv.proc.pid)))  # the first one, 30 s in, is the start

            async def soak() -> dict[str, Any]:
                sampler = asyncio.create_task(sample_rss())
                try:
                    return await load(srv.url, mixed, top, args.soak)
                finally:
                    sampler.cancel()

            res = asyncio.run(soak())
            # Both readings under load: an idle server lets the allocator hand pages back, so a reading
            # taken between two load phases understates the start.
            if len(series) < 2:
                sys.exit("the soak needs --soak of at least 60 s (RSS is sampled every 30 s)")
            start_rss, end_rss = series[0], series[-1]
        finally:
            code = srv.stop()
        growth = (end_rss - start_rss) / start_rss
        row = {"system": "micro-batching soak (mixed traffic)", "clients": top, **res,
               "settle_s": args.settle, "rss_start_mb": round(start_rss), "rss_end_mb": round(end_rss),
               "rss_growth": round(growth, 4), "rss_every_30s_mb": series,
               "exit_code_on_sigterm": code}
        soak_targets = [
            {"name": "RSS growth during the soak", "value": round(growth, 4), "goal": "< 0.10", "pass": growth < 0.10},
            {"name": "soak errors + lost", "value": res["errors"] + res["lost"], "goal": "0",
             "pass": res["errors"] + res["lost"] == 0},
        ]
        path = write_results(BENCH, "soak", [row], soak_targets, cmd, started, results_dir=out_dir)
        print(row)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
