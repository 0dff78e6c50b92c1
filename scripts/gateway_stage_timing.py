"""Where a non-streaming request's time goes inside the gateway, stage by stage.

Starts a stand-in worker (tests/standin_worker.py, answers after ``--token-delay-s`` per
token, no model, almost no CPU) and the real gateway app in a child process with
timestamps at six points of each chat request: the ASGI call, the upstream POST's start,
the request on the wire (the same aiohttp hook the idle path predicts from), the worker's
reply in hand, the response's headers handed to uvicorn, and the last body byte handed
over. This process sends the requests sequentially (the 1-token probe of ``bench
overhead``). The child prints the median of each stage; the JSON goes to ``--out``.

Usage: .venv/bin/python scripts/gateway_stage_timing.py [--requests N] [--token-delay-s S]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from predictor.files import write_json_report
from predictor.locations import REPO_ROOT, reports_dir
from server.live_bench import overhead_request
from server.worker_process import free_port

MODEL = "SmolLM2-135M-Instruct"
STAGES = ("asgi_call", "upstream_post", "on_the_wire", "reply_in", "headers_out", "body_out")
WARM_UP = 50


def serve_timed(worker: str, port: int) -> None:
    """The gateway app with stage timestamps; ``GET /stage-timing`` returns the medians."""
    import uvicorn

    from server import completions
    from server.app import create_app, default_predictor
    from server.config import load_config
    from server.shutdown import protocol_class

    rows: list[dict[str, float]] = []
    current: dict[str, float] = {}
    post_complete = completions.post_complete

    async def timed_post(session, url, body, total_timeout_s, connect_timeout_s, on_sent=None):
        current["upstream_post"] = time.perf_counter()

        def sent() -> None:
            current.setdefault("on_the_wire", time.perf_counter())
            if on_sent is not None:
                on_sent()

        reply = await post_complete(session, url, body, total_timeout_s, connect_timeout_s, sent)
        current["reply_in"] = time.perf_counter()
        return reply

    completions.post_complete = timed_post  # the name CompletionService calls
    cfg = load_config(None, {"port": port, "workers": [worker], "online_learning": False})
    app = create_app(cfg, predictor=default_predictor(cfg))

    def medians() -> dict:
        kept = [r for r in rows[WARM_UP:] if all(s in r for s in STAGES)]
        return {"requests": len(kept), "median_ms": {
            f"{a}_to_{b}_ms": statistics.median((r[b] - r[a]) * 1000 for r in kept)
            for a, b in itertools.pairwise(STAGES)}}

    async def timed_app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/stage-timing":
            body = json.dumps(medians()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await app(scope, receive, send)
        current.clear()
        current["asgi_call"] = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                current["headers_out"] = time.perf_counter()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                current["body_out"] = time.perf_counter()
                rows.append(dict(current))

        await app(scope, receive, timed_send)

    config = uvicorn.Config(timed_app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="on",
                            http=protocol_class(cfg.max_header_bytes, cfg.header_timeout_s))
    uvicorn.Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--token-delay-s", type=float, default=0.06)
    parser.add_argument("--serve", nargs=2, metavar=("WORKER", "PORT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=reports_dir() / "gateway_stage_timing.json")
    args = parser.parse_args()
    if args.serve:
        serve_timed(args.serve[0], int(args.serve[1]))
        return
    worker_port, gateway_port = free_port(), free_port()
    standin = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "standin_worker.py"), "--port",
         str(worker_port), "--model", MODEL, "--token-delay-s", str(args.token_delay_s)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = f"http://127.0.0.1:{worker_port}"
    gateway = None
    try:
        _wait(worker + "/v1/models")
        gateway = subprocess.Popen(
            [sys.executable, __file__, "--serve", worker, str(gateway_port)],
            cwd=REPO_ROOT)
        url = f"http://127.0.0.1:{gateway_port}"
        _wait(url + "/health")
        body = overhead_request(MODEL)
        seconds = []
        with httpx.Client(timeout=30, trust_env=False) as client:
            for i in range(WARM_UP + args.requests):
                began = time.perf_counter()
                client.post(url + "/v1/chat/completions", json=body).raise_for_status()
                if i >= WARM_UP:
                    seconds.append(time.perf_counter() - began)
        stages = httpx.get(url + "/stage-timing", timeout=10).json()
    finally:
        if gateway is not None:
            gateway.kill()
        standin.kill()
    report = {"token_delay_s": args.token_delay_s, "request": overhead_request(MODEL),
              "client_round_trip_p50_ms": statistics.median(seconds) * 1000, **stages}
    for name, value in stages["median_ms"].items():
        print(f"{name:32s} {value:7.3f} ms")
    print(f"client round trip p50 {report['client_round_trip_p50_ms']:.2f} ms")
    print("wrote", write_json_report(args.out, report))


def _wait(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


if __name__ == "__main__":
    main()
