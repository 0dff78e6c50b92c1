"""The floor under the gateway's overhead on this machine: a minimal pass-through proxy.

Three targets in alternation, the same 1-token chat request sequentially to each (as
``lengthwise bench overhead`` does for two): the vLLM worker directly, a minimal aiohttp
proxy that only forwards the bytes (no parsing, no prediction, no queue), and the real
gateway (``lengthwise serve --worker``, default settings). The paired differences against
the direct request say what any Python hop costs here beside a vLLM CPU worker, and what
the gateway adds on top of that. Prints the figures and writes reports/proxy_floor.json.

Usage: .venv/bin/python scripts/bench_proxy_floor.py [WORKER_URL] [PAIRS]
  (start a worker first, e.g. .venv/bin/python scripts/bench_worker.py 8400)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from pathlib import Path

import aiohttp
import httpx
from aiohttp import web

from predictor.files import write_json_report
from predictor.locations import reports_dir
from server.live_bench import (
    GatewayProcess,
    alternate_requests,
    overhead_request,
    paired_overhead_ms,
    percentile,
)
from server.worker_process import free_port

PATH = "/v1/chat/completions"


def serve_minimal_proxy(worker: str, port: int, ready: threading.Event) -> None:
    """Forward each POST's bytes to the worker with a pooled aiohttp session; nothing else."""

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3))

        async def forward(request: web.Request) -> web.Response:
            data = await request.read()
            async with session.post(worker + PATH, data=data,
                                    headers={"content-type": "application/json"}) as upstream:
                out = await upstream.read()
                return web.Response(body=out, status=upstream.status, content_type="application/json")

        app = web.Application()
        app.router.add_post(PATH, forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    worker = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8400"
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    model = httpx.get(worker + "/v1/models").json()["data"][0]["id"]
    body = overhead_request(model)
    proxy_port, ready = free_port(), threading.Event()
    threading.Thread(target=serve_minimal_proxy, args=(worker, proxy_port, ready),
                     daemon=True).start()
    ready.wait()
    tmp = Path(tempfile.mkdtemp())
    gateway_args = ["--policy", "sjf-aged", "--request-log", str(tmp / "requests.jsonl")]
    with GatewayProcess(worker, free_port(), gateway_args, tmp / "gateway.log") as gw:
        seconds = alternate_requests(
            {"direct": worker, "proxy": f"http://127.0.0.1:{proxy_port}", "gateway": gw.url},
            body, pairs)
    report = {"pairs": pairs, "worker_url": worker, "request": body,
              "direct_p50_ms": percentile(seconds["direct"], 0.5) * 1000}
    for name in ("proxy", "gateway"):
        p50, p90 = paired_overhead_ms(seconds[name], seconds["direct"])
        report[f"{name}_paired_overhead_p50_ms"] = p50
        report[f"{name}_paired_overhead_p90_ms"] = p90
        print(f"{name:8s} paired overhead p50 {p50:.2f} ms, p90 {p90:.1f} ms")
    print(f"direct p50 {report['direct_p50_ms']:.1f} ms")
    print("wrote", write_json_report(reports_dir() / "proxy_floor.json", report))


if __name__ == "__main__":
    main()
