"""Soak benchmark (not a test): the gateway at 80% of capacity for a long time, against a
real vLLM worker. Reports every error and the slope of the gateway's resident memory.

1. Start the real gateway process (``lengthwise serve --worker URL``).
2. Calibrate: a closed loop of ``2 x max_sequences`` clients for ``calibrate_s``
   measures capacity in requests per second for this workload.
3. Soak: Poisson arrivals at ``load_fraction x capacity`` for ``duration_s``, real
   prompts (Dolly, Alpaca), half of them streamed. The gateway's RSS is sampled every
   ``sample_interval_s``; the slope is a least-squares fit after the first 10% (warm-up).
4. Write the JSON report (``--output``).

Run: ``lengthwise bench soak --worker http://127.0.0.1:8100 --duration-s 1800``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from lengthwise.bench.gateway_process import GatewayProcess
from lengthwise.bench.live import load_prompts, percentile
from lengthwise.bench.settings import SoakSettings
from lengthwise.common.files import write_json_report
from lengthwise.common.paths import cache_dir
from lengthwise.worker.process import free_port


@dataclass
class _Tally:
    ok: int = 0
    errors: Counter = None  # type: ignore[assignment]
    latencies: list[float] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.errors = Counter()
        self.latencies = []


async def _request(client: httpx.AsyncClient, url: str, body: dict, tally: _Tally) -> None:
    sent = time.monotonic()
    try:
        if not body.get("stream"):
            resp = await client.post(url, json=body)
            if resp.status_code != 200:
                tally.errors[f"http_{resp.status_code}"] += 1
                return
            resp.json()["choices"]
        else:
            async with client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    tally.errors[f"http_{resp.status_code}"] += 1
                    return
                last = ""
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        last = line[6:]
                        if last.startswith('{"error"'):
                            tally.errors["stream_error_event"] += 1
                            return
                if last != "[DONE]":
                    tally.errors["stream_truncated"] += 1
                    return
    except httpx.HTTPError as exc:
        tally.errors[f"transport_{type(exc).__name__}"] += 1
        return
    tally.ok += 1
    tally.latencies.append(time.monotonic() - sent)


def _bodies(model: str, s: SoakSettings, n: int) -> list[dict]:
    prompts = load_prompts(n, s.seed)
    return [{"model": model, "messages": p, "max_tokens": s.max_tokens, "temperature": 0.7,
             "seed": s.seed + i, "stream": i % 2 == 0} for i, p in enumerate(prompts)]


async def _calibrate(url: str, bodies: list[dict], s: SoakSettings) -> float:
    tally = _Tally()
    end = time.monotonic() + s.calibrate_s
    counter = iter(range(10**9))

    async def loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            await _request(client, url, bodies[next(counter) % len(bodies)], tally)

    start = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(loop(client) for _ in range(s.calibrate_clients)))
    return tally.ok / (time.monotonic() - start)


async def _soak(url: str, bodies: list[dict], rate: float, s: SoakSettings, pid: int,
                log: Callable[[str], None]) -> tuple[_Tally, list[tuple[float, int]], int]:
    tally = _Tally()
    rss: list[tuple[float, int]] = []
    proc = psutil.Process(pid)
    rng = random.Random(s.seed)
    start = time.monotonic()
    end = start + s.duration_s
    tasks: set[asyncio.Task[None]] = set()
    sent = 0

    async def sampler() -> None:
        next_log = start
        while time.monotonic() < end:
            rss.append((time.monotonic() - start, proc.memory_info().rss))
            if time.monotonic() >= next_log:
                log(f"  t={time.monotonic() - start:6.0f} s  sent {sent}  ok {tally.ok}  "
                    f"errors {sum(tally.errors.values())}  rss {rss[-1][1] / 2**20:.1f} MiB")
                next_log += 60
            await asyncio.sleep(s.sample_interval_s)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        sampling = asyncio.ensure_future(sampler())
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            task = asyncio.ensure_future(_request(client, url, bodies[sent % len(bodies)], tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await sampling
        await asyncio.gather(*tasks)
    return tally, rss, sent


def _slope_mib_per_hour(samples: list[tuple[float, int]],
                        skip_fraction: float = 0.1) -> tuple[float, float]:
    """Least-squares slope of RSS (MiB per hour) after the first ``skip_fraction`` of
    samples, and r^2."""
    pts = samples[int(len(samples) * skip_fraction):]
    if len(pts) < 3:
        return float("nan"), float("nan")
    xs = [t / 3600.0 for t, _ in pts]
    ys = [r / 2**20 for _, r in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx if sxx else float("nan")
    r2 = (sxy * sxy) / (sxx * syy) if sxx and syy else 0.0
    return slope, r2


def run_soak(worker_url: str, model: str, s: SoakSettings, output: Path,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    work = cache_dir() / "soak"
    work.mkdir(parents=True, exist_ok=True)
    bodies = _bodies(model, s, 4000)
    port = free_port()
    settings = {"max_sequences_per_worker": s.max_sequences_per_worker,  # None: the default
                "request_log_path": str(work / "requests.jsonl")}
    with GatewayProcess(worker_url, port, settings, work) as gw:
        url = gw.url + "/v1/chat/completions"
        log(f"calibrating capacity for {s.calibrate_s:.0f} s ...")
        capacity = asyncio.run(_calibrate(url, bodies, s))
        rate = s.load_fraction * capacity
        log(f"capacity {capacity:.2f} req/s; soaking at {rate:.2f} req/s for {s.duration_s:.0f} s")
        assert gw.proc is not None
        tally, rss, sent = asyncio.run(_soak(url, bodies, rate, s, gw.proc.pid, log))
        metrics_text = httpx.get(gw.url + "/metrics", timeout=10).text
    slope, r2 = _slope_mib_per_hour(rss)
    # Warm-up growth (the online-learning buffer filling, allocator arenas) flattens out;
    # the second half's slope is what a leak would keep.
    late_slope, late_r2 = _slope_mib_per_hour(rss, skip_fraction=0.5)
    lat = tally.latencies
    report = {
        "settings": asdict(s),
        "worker": worker_url,
        "model": model,
        "capacity_req_s": capacity,
        "offered_rate_req_s": rate,
        "requests_sent": sent,
        "requests_ok": tally.ok,
        "errors": dict(tally.errors),
        "error_count": sum(tally.errors.values()),
        "latency_p50_s": percentile(lat, 0.5),
        "latency_p99_s": percentile(lat, 0.99),
        "gateway_rss_start_mib": rss[0][1] / 2**20 if rss else None,
        "gateway_rss_end_mib": rss[-1][1] / 2**20 if rss else None,
        "gateway_rss_max_mib": max(r for _, r in rss) / 2**20 if rss else None,
        "gateway_rss_slope_mib_per_hour": slope,
        "gateway_rss_slope_r2": r2,
        "gateway_rss_slope_second_half_mib_per_hour": late_slope,
        "gateway_rss_slope_second_half_r2": late_r2,
        "gateway_rss_samples": [[round(t, 1), round(r / 2**20, 2)] for t, r in rss],
        "gateway_retries_total": _metric_sum(metrics_text, "lengthwise_retries_total"),
    }
    path = output
    write_json_report(path, report)
    log(f"ok {tally.ok}/{sent}, errors {dict(tally.errors)}, RSS slope {slope:.2f} MiB/h "
        f"(r^2 {r2:.2f}); wrote {path}")
    return report


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total
