"""The live benchmark: plain vLLM vs. the gateway with ``fcfs`` vs. with ``sjf``.

One run, one vLLM CPU worker, three arms fed the same workload: real Dolly and
Alpaca prompts, the same arrival times, the same per-request seeds and sampling.
The gateway arms run the real gateway as a separate process (``lengthwise
serve --worker ...``) with an admission limit well below the burst size, so
requests wait in the gateway's queue where the order matters. Every request
streams (TTFT is measured at the first token) and asks for usage, so
throughput counts the tokens vLLM reports.

"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lengthwise.bench.gateway_process import NO_TIMEOUTS, GatewayProcess
from lengthwise.bench.settings import Workload
from lengthwise.common.files import write_json_report
from lengthwise.common.paths import shared_dir
from lengthwise.worker.process import free_port

ARMS = ("vllm_direct", "gateway_fcfs", "gateway_sjf")


@dataclass
class RequestResult:
    index: int
    ok: bool
    sent_at: float
    e2e_s: float
    ttft_s: float | None
    completion_tokens: int
    prompt_tokens: int
    queue_wait_s: float | None
    predicted_tokens: float | None
    error: str | None = None


@dataclass
class ArmReport:
    requests: int
    ok: int
    e2e_mean_s: float
    e2e_p50_s: float
    e2e_p90_s: float
    e2e_p99_s: float
    ttft_mean_s: float
    ttft_p99_s: float
    throughput_tok_s: float
    max_queue_wait_s: float | None
    completion_tokens: int
    makespan_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def load_prompts(n: int, seed: int, folder: Path | None = None) -> list[list[dict]]:
    """``n`` chat prompts drawn from the Dolly and Alpaca validation sets."""
    folder = folder or shared_dir() / "prompts"
    items: list[str] = []
    for name in ("dolly_validate.json", "alpaca_validate.json"):
        for row in json.loads((folder / name).read_text(encoding="utf-8")):
            extra = row.get("context") or row.get("input") or ""
            text = row["instruction"] + (f"\n\n{extra}" if extra else "")
            items.append(text)
    rng = random.Random(seed)
    rng.shuffle(items)
    chosen = [items[i % len(items)] for i in range(n)]
    return [[{"role": "user", "content": text}] for text in chosen]


def arrival_offsets(w: Workload) -> list[float]:
    if w.arrivals == "burst":
        return [0.0] * w.num_requests
    rng = random.Random(w.seed + 1)
    t, out = 0.0, []
    for _ in range(w.num_requests):
        out.append(t)
        t += rng.expovariate(w.rate_per_s)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def _one_request(
    client: httpx.AsyncClient, url: str, body: dict, index: int, start: float, offset: float
) -> RequestResult:
    await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
    sent = time.monotonic()
    ttft = None
    usage: dict = {}
    try:
        async with client.stream("POST", url, json=body) as resp:
            queue_ms = resp.headers.get("x-lengthwise-queue-ms")
            predicted = resp.headers.get("x-lengthwise-predicted-tokens")
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:300]
                return RequestResult(index, False, sent - start, time.monotonic() - sent, None,
                                     0, 0, None, None, f"HTTP {resp.status_code}: {text}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    raise RuntimeError(str(data["error"]))
                if ttft is None and data.get("choices"):
                    ttft = time.monotonic() - sent
                if data.get("usage"):
                    usage = data["usage"]
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        return RequestResult(index, False, sent - start, time.monotonic() - sent, ttft, 0, 0,
                             None, None, repr(exc))
    return RequestResult(
        index, True, sent - start, time.monotonic() - sent, ttft,
        int(usage.get("completion_tokens", 0)), int(usage.get("prompt_tokens", 0)),
        float(queue_ms) / 1000.0 if queue_ms is not None else None,
        float(predicted) if predicted is not None else None,
    )


def request_bodies(w: Workload, model: str, prompts: list[list[dict]]) -> list[dict]:
    return [
        {"model": model, "messages": messages, "max_tokens": w.max_tokens,
         "temperature": w.temperature, "top_p": w.top_p, "seed": w.seed + i, "stream": True,
         "stream_options": {"include_usage": True}}
        for i, messages in enumerate(prompts)
    ]


async def run_arm(base_url: str, bodies: list[dict], offsets: list[float]) -> list[RequestResult]:
    url = f"{base_url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits,
                                 trust_env=False) as client:
        start = time.monotonic() + 0.5
        tasks = [_one_request(client, url, b, i, start, offsets[i]) for i, b in enumerate(bodies)]
        return list(await asyncio.gather(*tasks))


def summarize(results: list[RequestResult]) -> ArmReport:
    ok = [r for r in results if r.ok]
    e2e = [r.e2e_s for r in ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tokens = sum(r.completion_tokens for r in ok)
    if ok:
        first = min(r.sent_at for r in ok)
        last = max(r.sent_at + r.e2e_s for r in ok)
        makespan = last - first
    else:
        makespan = float("nan")
    waits = [r.queue_wait_s for r in ok if r.queue_wait_s is not None]
    return ArmReport(
        requests=len(results), ok=len(ok),
        e2e_mean_s=statistics.fmean(e2e) if e2e else float("nan"),
        e2e_p50_s=percentile(e2e, 0.5), e2e_p90_s=percentile(e2e, 0.9),
        e2e_p99_s=percentile(e2e, 0.99),
        ttft_mean_s=statistics.fmean(ttft) if ttft else float("nan"),
        ttft_p99_s=percentile(ttft, 0.99),
        throughput_tok_s=tokens / makespan if makespan > 0 else float("nan"),
        max_queue_wait_s=max(waits) if waits else None,
        completion_tokens=tokens, makespan_s=makespan,
    )


def _gateway_settings(w: Workload, policy: str, request_log: Path) -> dict[str, Any]:
    return {"policy": policy, "max_sequences_per_worker": w.max_sequences_per_worker,
            "queue_capacity": max(1024, w.num_requests), "request_log_path": str(request_log),
            "aging_s_per_token": w.aging_s_per_token, "point_estimate": w.point_estimate,
            **NO_TIMEOUTS}


def run_live_bench(
    worker_url: str, model: str, w: Workload, output: Path, log=print
) -> dict[str, Any]:
    """Writes ``output`` (JSON), a plot beside it, and each gateway arm's request log in
    ``<output stem>.logs/``."""
    logs = output.with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(w.num_requests, w.seed)
    bodies = request_bodies(w, model, prompts)
    offsets = arrival_offsets(w)

    log(f"warm-up: 4 requests direct to {worker_url}")
    asyncio.run(run_arm(worker_url, bodies[:4], [0.0] * 4))
    all_results: dict[str, list[RequestResult]] = {}
    for arm in ARMS:
        t0 = time.monotonic()
        if arm == "vllm_direct":
            results = asyncio.run(run_arm(worker_url, bodies, offsets))
        else:
            policy = "fcfs" if arm == "gateway_fcfs" else w.sjf_policy
            req_log = logs / f"{arm}.requests.jsonl"
            req_log.unlink(missing_ok=True)
            with GatewayProcess(worker_url, free_port(), _gateway_settings(w, policy, req_log),
                                logs, arm) as gw:
                results = asyncio.run(run_arm(gw.url, bodies, offsets))
        all_results[arm] = results
        rep = summarize(results)
        log(f"{arm}: {rep.ok}/{rep.requests} ok in {time.monotonic() - t0:.0f}s, "
            f"e2e mean {rep.e2e_mean_s:.2f}s p99 {rep.e2e_p99_s:.2f}s, "
            f"ttft mean {rep.ttft_mean_s:.2f}s, {rep.throughput_tok_s:.1f} tok/s")

    report: dict[str, Any] = {}
    workload = asdict(w)
    for arm, results in all_results.items():
        rep = asdict(summarize(results))
        rep.pop("extra")
        rep["workload"] = workload
        report[arm] = rep
    d, f, s = (report[a] for a in ARMS)
    report["targets"] = {
        "sjf_mean_over_fcfs_mean": s["e2e_mean_s"] / f["e2e_mean_s"],
        "sjf_mean_over_fcfs_mean_target": 0.7,
        "sjf_throughput_over_direct": s["throughput_tok_s"] / d["throughput_tok_s"],
        "sjf_throughput_over_direct_target": 0.95,
        "sjf_p99_over_fcfs_p99": s["e2e_p99_s"] / f["e2e_p99_s"],
        "sjf_p99_over_fcfs_p99_target": 1.5,
    }
    report["prediction"] = _prediction_quality(all_results["gateway_sjf"])
    report["by_length_third"] = length_thirds(all_results)
    report["environment"] = {"worker_url": worker_url, "model": model,
                             "measured_at_unix": time.time()}
    write_json_report(output, report)
    _plot(all_results, output.with_suffix(".png"))
    return report


def length_thirds(all_results: dict[str, list[RequestResult]],
                  reference: str = "gateway_fcfs") -> dict[str, Any]:
    """Mean E2E per arm for the shortest, middle and longest third of the requests.

    A request's third is fixed by its length in the ``reference`` arm (the same prompt and
    seed give nearly the same length in every arm), so each arm is scored on the same
    requests: whether short answers stop waiting behind long ones, and what the long pay."""
    ref = {r.index: r.completion_tokens for r in all_results[reference] if r.ok}
    ordered = sorted(ref, key=lambda i: (ref[i], i))
    cut = len(ordered) / 3
    thirds = {"shortest": set(ordered[: round(cut)]),
              "middle": set(ordered[round(cut): round(2 * cut)]),
              "longest": set(ordered[round(2 * cut):])}
    out: dict[str, Any] = {"reference_arm": reference}
    for name, members in thirds.items():
        lengths = [ref[i] for i in members]
        band: dict[str, Any] = {"requests": len(members),
                                "tokens_min": min(lengths) if lengths else None,
                                "tokens_max": max(lengths) if lengths else None}
        for arm, results in all_results.items():
            e2e = [r.e2e_s for r in results if r.ok and r.index in members]
            band[f"{arm}_e2e_mean_s"] = statistics.fmean(e2e) if e2e else None
        fcfs, sjf = band.get("gateway_fcfs_e2e_mean_s"), band.get("gateway_sjf_e2e_mean_s")
        band["sjf_over_fcfs"] = sjf / fcfs if fcfs and sjf is not None else None
        out[name] = band
    return out


def _prediction_quality(results: list[RequestResult]) -> dict[str, float | None]:
    pairs = [(r.predicted_tokens, r.completion_tokens) for r in results
             if r.ok and r.predicted_tokens is not None]
    if len(pairs) < 3:
        return {"pairs": len(pairs), "spearman": None}
    from scipy.stats import spearmanr

    from lengthwise.common.rank import finite_or_none, kendall_tau

    pred, actual = zip(*pairs)
    return {
        "pairs": len(pairs),
        "spearman": float(spearmanr(pred, actual).statistic),
        "kendall_tau": finite_or_none(kendall_tau(pred, actual)),
        "mae_tokens": statistics.fmean(abs(p - a) for p, a in pairs),
        "actual_mean_tokens": statistics.fmean(actual),
    }


def _plot(all_results: dict[str, list[RequestResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, results in all_results.items():
        e2e = sorted(r.e2e_s for r in results if r.ok)
        ttft = sorted(r.ttft_s for r in results if r.ok and r.ttft_s is not None)
        for ax, values in ((axes[0], e2e), (axes[1], ttft)):
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.plot(values, ys, label=arm)
    axes[0].set_xlabel("end-to-end latency (s)")
    axes[1].set_xlabel("time to first token (s)")
    for ax in axes:
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Lengthwise live benchmark (CDF per arm)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
