"""What a hop costs at low load: the gateway, and a minimal byte-forwarding proxy beside it.

Identical sequential 1-token requests go in turn to the worker directly, to the real
gateway (``lengthwise serve --worker``, default settings) and, optionally, to a minimal
aiohttp proxy that only forwards the bytes (no parsing, prediction or queue). The
per-round differences against the direct request say what each hop adds to the same
request; the proxy's is the floor any Python hop pays beside a vLLM worker on this machine.

On a small machine the hops share cores with a CPU worker. To measure them as they run in
production, on cores of their own, pin the worker and the benchmark apart, e.g.
``VLLM_CPU_OMP_THREADS_BIND=0 taskset -c 0 lengthwise worker --port 8401`` and
``taskset -c 1 lengthwise bench overhead --worker http://127.0.0.1:8401`` (the proxy runs
in this process and the gateway is its child, so both inherit the pinning; the report
records the CPUs they were allowed).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from lengthwise.bench.gateway_process import GatewayProcess
from lengthwise.bench.live import percentile
from lengthwise.common.files import write_json_report
from lengthwise.worker.process import free_port

PATH = "/v1/chat/completions"


def overhead_request(model: str) -> dict:
    """The low-load probe: a 1-token greedy chat answer, so the hop is most of what varies."""
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 1, "temperature": 0.0}


def alternate_requests(targets: dict[str, str], body: dict, rounds: int,
                       warm_up: int = 10) -> dict[str, list[float]]:
    """Seconds per request to each base URL's chat endpoint: one sequential request to each
    target in turn, ``rounds`` times, after ``warm_up`` untimed rounds (paths, connections)."""
    seconds: dict[str, list[float]] = {name: [] for name in targets}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for round_ in range(warm_up + rounds):
            for name, url in targets.items():
                began = time.perf_counter()
                response = client.post(f"{url}{PATH}", json=body)
                if round_ >= warm_up:
                    seconds[name].append(time.perf_counter() - began)
                response.raise_for_status()
    return seconds


def paired_overhead_ms(via: list[float], direct: list[float]) -> tuple[float, float]:
    """p50 and p90 of the per-round difference (ms): what one hop adds to the same request."""
    diffs = [v - d for v, d in zip(via, direct)]
    return percentile(diffs, 0.5) * 1000, percentile(diffs, 0.9) * 1000


def serve_minimal_proxy(worker: str, port: int, ready: threading.Event) -> None:
    """Forward each POST's bytes to the worker with a pooled aiohttp session; nothing else."""

    async def main() -> None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3))

        async def forward(request: web.Request) -> web.Response:
            data = await request.read()
            async with session.post(worker + PATH, data=data,
                                    headers={"content-type": "application/json"}) as upstream:
                out = await upstream.read()
                return web.Response(body=out, status=upstream.status,
                                    content_type="application/json")

        app = web.Application()
        app.router.add_post(PATH, forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def measure_overhead(worker_url: str, model: str, output: Path, samples: int = 200,
                     proxy_floor: bool = True, log=print) -> dict[str, Any]:
    """Alternate direct / gateway (/ minimal proxy) requests; write the paired figures."""
    body = overhead_request(model)
    targets = {"direct": worker_url}
    if proxy_floor:
        proxy_port, ready = free_port(), threading.Event()
        threading.Thread(target=serve_minimal_proxy, args=(worker_url, proxy_port, ready),
                         daemon=True).start()
        ready.wait()
        targets["proxy"] = f"http://127.0.0.1:{proxy_port}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"request_log_path": str(Path(tmp) / "requests.jsonl")}
        with GatewayProcess(worker_url, free_port(), settings, Path(tmp)) as gw:
            targets["gateway"] = gw.url
            seconds = alternate_requests(targets, body, samples)
    direct = seconds["direct"]
    report: dict[str, Any] = {
        "samples": samples, "request": body, "worker_url": worker_url,
        "client_and_hop_cpus": sorted(os.sched_getaffinity(0)),
        "direct_p50_ms": percentile(direct, 0.5) * 1000,
        "target_paired_overhead_p50_ms": 2.0,
    }
    for name in targets:
        if name == "direct":
            continue
        p50, p90 = paired_overhead_ms(seconds[name], direct)
        report[name] = {"p50_ms": percentile(seconds[name], 0.5) * 1000,
                        "paired_overhead_p50_ms": p50, "paired_overhead_p90_ms": p90,
                        "paired_overhead_mean_ms": 1000 * statistics.fmean(
                            v - d for v, d in zip(seconds[name], direct))}
    log(json.dumps(report, indent=2))
    write_json_report(output, report)
    return report
