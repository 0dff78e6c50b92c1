"""The floor under the gateway's overhead on this machine: a minimal pass-through proxy.

Three targets in alternation, the same 1-token chat request sequentially to each (as
``lengthwise bench overhead`` does for two): the vLLM worker directly, a minimal aiohttp
proxy that only forwards the bytes (no parsing, no prediction, no queue), and the real
gateway (``lengthwise serve --worker``, default settings). The paired differences against
the direct request say what any Python hop costs here beside a vLLM CPU worker, and what
the gateway adds on top of that. Prints the figures and writes reports/proxy_floor.json.

Usage: .venv/bin/python scripts/bench_proxy_floor.py [WORKER_URL] [PAIRS] [--out PATH]
  (start a worker first, e.g. .venv/bin/python scripts/bench_worker.py 8400)

On a small machine the hops share cores with the CPU worker. To measure them as they run
in production, on cores of their own, pin the worker and this script apart, e.g.:
  VLLM_CPU_OMP_THREADS_BIND=0 taskset -c 0 .venv/bin/python scripts/bench_worker.py 8401 &
  taskset -c 1 .venv/bin/python scripts/bench_proxy_floor.py http://127.0.0.1:8401 300 \
      --out reports/proxy_floor_pinned.json
(the proxy runs in this process and the gateway is its child, so both inherit the pinning;
the report records the CPUs they were allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worker", nargs="?", default="http://127.0.0.1:8400")
    parser.add_argument("pairs", nargs="?", type=int, default=200)
    parser.add_argument("--out", type=Path, default=reports_dir() / "proxy_floor.json")
    args = parser.parse_args()
    worker, pairs = args.worker, args.pairs
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
              "client_and_hop_cpus": sorted(os.sched_getaffinity(0)),
              "direct_p50_ms": percentile(seconds["direct"], 0.5) * 1000}
    for name in ("proxy", "gateway"):
        p50, p90 = paired_overhead_ms(seconds[name], seconds["direct"])
        report[f"{name}_paired_overhead_p50_ms"] = p50
        report[f"{name}_paired_overhead_p90_ms"] = p90
        print(f"{name:8s} paired overhead p50 {p50:.2f} ms, p90 {p90:.1f} ms")
    print(f"direct p50 {report['direct_p50_ms']:.1f} ms")
    print("wrote", write_json_report(args.out, report))


if __name__ == "__main__":
    main()
