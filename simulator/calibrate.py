"""Calibrate the step-time model against a live vLLM worker (OpenAI API).

The sweep measures two kinds of step from the client side, with streaming:

* **Decode steps.** ``B`` concurrent requests with a ``P``-token prompt each
  generate ``decode_tokens`` tokens (``ignore_eos``). Once every request has
  its first token, the batch is pure decode, so the mean gap between
  streamed tokens in the middle of the streams is one step of ``B`` decodes
  over about ``P + k`` KV tokens each.
* **Prefill steps.** One request with a ``P``-token prompt and
  ``max_tokens=1``; its time to first token minus the fixed request overhead
  is one prefill step of ``P`` tokens. The overhead (HTTP, queueing into the
  engine, detokenising) is estimated as the TTFT of the shortest prompt minus
  one single-sequence decode step.

Prompts are random token ids (sent as a token-id list, so lengths are exact)
and unique per request, so vLLM's prefix cache cannot shorten a prefill
whether or not the worker enables it. The measurements are fitted with
:func:`simulator.latency.fit_linear`.

The probes sample like the live benchmark (``lengthwise/bench/live.py``:
temperature 0.7, top-p 0.95, a seed per request), because on a CPU worker
sampling is part of every step: a seeded request takes vLLM's per-request
generator path and top-p sorts the vocabulary.

**Per-request overhead.** What a live request pays outside the engine's steps
is measured on the path live traffic takes: streamed ``/v1/chat/completions``
requests with a short message (chat template and tokenisation in the API
server, detokenisation and SSE on the way out). ``pre_engine_s`` = their TTFT
minus the fitted prefill step of their (templated) prompt, as vLLM's usage
counts it; ``post_engine_s`` = end of the response minus the last token. The
simulator replays them as a dispatch delay and a response delay per request
(``SimConfig.dispatch_delay_s`` / ``response_delay_s``). The gateway's own
hop is not in them (the probes go straight to the worker).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lengthwise.common.cpu_worker import LIVE_BENCH_TEMPERATURE, LIVE_BENCH_TOP_P

from .latency import BatchShape, LinearStepModel, fit_linear


@dataclass(frozen=True)
class CalibrationPlan:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    prompt_tokens: list[int] = field(default_factory=lambda: [32, 256, 768])
    decode_tokens: int = 24
    #: prompt lengths for the prefill probes (one request each)
    #: (up to 2048: a burst's first step on the bench worker, chunked prefill off,
    #: prefills 16 chat prompts at once)
    prefill_probe_tokens: list[int] = field(default_factory=lambda: [16, 128, 512, 1024, 2048])
    repeats: int = 2
    #: token ids are drawn from this range (inside any common vocabulary)
    token_id_range: tuple[int, int] = (1000, 20000)
    #: sampling of every probe (the live benchmark's; None = greedy)
    temperature: float = LIVE_BENCH_TEMPERATURE
    top_p: float = LIVE_BENCH_TOP_P
    #: send a distinct ``seed`` with every probe, as the live benchmark does
    seeded: bool = True
    #: chat requests that size the per-request overhead (0 = skip)
    overhead_probes: int = 6
    overhead_probe_tokens: int = 8


@dataclass
class Measurement:
    kind: str
    batch: BatchShape
    seconds: float


@dataclass(frozen=True)
class RequestOverhead:
    """Per-request time outside the engine's steps (seconds); see the module docstring."""

    pre_engine_s: float = 0.0
    post_engine_s: float = 0.0
    source: str = "none"

    def to_dict(self) -> dict:
        return {"pre_engine_s": self.pre_engine_s, "post_engine_s": self.post_engine_s,
                "source": self.source}


def load_request_overhead(path: str | Path) -> RequestOverhead | None:
    """The overhead a calibration file holds, or ``None`` (e.g. a table-fitted model)."""
    data = json.loads(Path(path).read_text()).get("request_overhead")
    if not data:
        return None
    return RequestOverhead(float(data["pre_engine_s"]), float(data["post_engine_s"]),
                           str(data.get("source", path)))


@dataclass
class CalibrationResult:
    model: LinearStepModel
    measurements: list[Measurement]
    overhead: RequestOverhead | None = None
    plan: CalibrationPlan | None = None
    overhead_samples: list[dict] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        """The linear model (loadable by ``load_cost_model``) plus the request overhead."""
        doc = {"kind": "linear", **self.model.to_dict()}
        if self.overhead is not None:
            doc["request_overhead"] = self.overhead.to_dict()
        if self.plan is not None:
            doc["calibration"] = {
                "plan": asdict(self.plan),
                "prefix_cache": "cannot hit: every probe prompt is unique random token ids",
                "overhead_samples": self.overhead_samples,
            }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")

    def table(self) -> list[dict]:
        return [
            {
                "kind": m.kind,
                "prefill_tokens": m.batch.num_prefill_tokens,
                "num_decode": m.batch.num_decode,
                "decode_kv_sum": m.batch.decode_kv_sum,
                "measured_ms": m.seconds * 1000,
                "fitted_ms": self.model.step_time(m.batch) * 1000,
            }
            for m in self.measurements
        ]


class _Client:
    def __init__(self, base_url: str, model: str | None, plan: CalibrationPlan) -> None:
        import httpx

        self.base = base_url.rstrip("/")
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))
        self.model = model
        self.plan = plan
        self.rng = random.Random(0)
        #: the worker's context length (vLLM lists it in /v1/models); probes must fit it
        self.max_model_len: int | None = None

    async def resolve_model(self) -> str:
        r = await self.http.get(f"{self.base}/v1/models")
        r.raise_for_status()
        data = r.json().get("data") or []
        if not data:
            raise RuntimeError("the worker lists no models")
        entry = next((d for d in data if d.get("id") == self.model), data[0])
        self.model = self.model or entry["id"]
        if entry.get("max_model_len"):
            self.max_model_len = int(entry["max_model_len"])
        return self.model

    def fits(self, prompt_len: int, max_tokens: int) -> bool:
        return self.max_model_len is None or prompt_len + max_tokens <= self.max_model_len

    def prompt(self, n: int) -> list[int]:
        lo, hi = self.plan.token_id_range
        return [self.rng.randrange(lo, hi) for _ in range(n)]

    def sampling(self) -> dict:
        plan = self.plan
        body: dict = {"temperature": plan.temperature, "top_p": plan.top_p}
        if plan.seeded:
            body["seed"] = self.rng.randrange(1, 2**31)
        return body

    async def stream(self, prompt_len: int, max_tokens: int) -> tuple[float, list[float]]:
        """Send one request; returns (start, arrival times of each streamed token)."""
        body = {
            "model": self.model,
            "prompt": self.prompt(prompt_len),
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            **self.sampling(),
        }
        start, stamps, _end, _usage = await self._sse(
            "/v1/completions", body, lambda c: c.get("text") is not None)
        return start, stamps

    async def chat(self, max_tokens: int) -> tuple[float, list[float], float, dict]:
        """One streamed chat request like live traffic: (start, token stamps, end, usage)."""
        nonce = self.rng.randrange(10**6)
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Count from {nonce} upwards."}],
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.sampling(),
        }
        # Any chunk with a choice counts, as the gateway's TTFT does (the role chunk
        # is sent with the first token).
        return await self._sse("/v1/chat/completions", body, lambda c: True)

    async def _sse(self, path: str, body: dict, is_token) -> tuple[float, list[float], float, dict]:
        start = time.perf_counter()
        stamps: list[float] = []
        usage: dict = {}
        async with self.http.stream("POST", f"{self.base}{path}", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"worker answered HTTP {resp.status_code}: {text}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                if choices and is_token(choices[0]):
                    stamps.append(time.perf_counter())
        return start, stamps, time.perf_counter(), usage

    async def close(self) -> None:
        await self.http.aclose()


async def _calibrate(base_url: str, plan: CalibrationPlan, model: str | None,
                     budget_s: float) -> CalibrationResult:
    client = _Client(base_url, model, plan)
    deadline = time.perf_counter() + budget_s
    measurements: list[Measurement] = []
    try:
        await client.resolve_model()
        await client.stream(8, 2)  # warm-up
        # Single-sequence decode first: it also sizes the fixed request overhead.
        single_decode = await _decode_step(client, 1, min(plan.prompt_tokens), plan)
        # prefill steps (cheap: one short request each)
        ttfts: dict[int, float] = {}
        for p in plan.prefill_probe_tokens:
            if not client.fits(p, 1):
                continue
            best = float("inf")
            for _ in range(plan.repeats):
                if time.perf_counter() > deadline:
                    break
                start, stamps = await client.stream(p, 1)
                if stamps:
                    best = min(best, stamps[0] - start)
            if best < float("inf"):
                ttfts[p] = best
        if ttfts and single_decode is not None:
            p_min = min(ttfts)
            overhead = max(0.0, ttfts[p_min] - single_decode[1])
            for p, t in sorted(ttfts.items()):
                measurements.append(
                    Measurement("prefill", BatchShape([p], [0], 0, 0), max(t - overhead, 1e-4))
                )
        if single_decode is not None:
            measurements.append(single_decode[0])
        # decode steps across batch sizes and context lengths
        for p in plan.prompt_tokens:
            for b in plan.batch_sizes:
                if time.perf_counter() > deadline:
                    break
                if (b == 1 and p == min(plan.prompt_tokens)) or not client.fits(
                        p, plan.decode_tokens):
                    continue  # measured above, or longer than the worker accepts
                got = await _decode_step(client, b, p, plan)
                if got is not None:
                    measurements.append(got[0])
    finally:
        await client.close()
    if len(measurements) < 6:
        raise RuntimeError(f"only {len(measurements)} usable measurements; is the worker busy?")
    fitted = fit_linear(
        [m.batch for m in measurements],
        [m.seconds for m in measurements],
        source=f"calibrated against {base_url} (model {client.model})",
    )
    overhead, samples = None, []
    if plan.overhead_probes > 0:
        client = _Client(base_url, client.model, plan)
        try:
            overhead, samples = await _request_overhead(client, fitted, plan)
        finally:
            await client.close()
    return CalibrationResult(fitted, measurements, overhead, plan, samples)


async def _request_overhead(
    client: _Client, model: LinearStepModel, plan: CalibrationPlan
) -> tuple[RequestOverhead | None, list[dict]]:
    """Chat requests one at a time: TTFT minus the modelled prefill, and the response tail."""
    samples = []
    for _ in range(plan.overhead_probes):
        start, stamps, end, usage = await client.chat(plan.overhead_probe_tokens)
        prompt = int(usage.get("prompt_tokens") or 0)
        if not stamps or prompt < 1:
            continue
        prefill = model.step_time(BatchShape([prompt], [0], 0, 0))
        samples.append({
            "prompt_tokens": prompt,
            "ttft_s": stamps[0] - start,
            "modelled_prefill_s": prefill,
            "pre_engine_s": stamps[0] - start - prefill,
            "post_engine_s": end - stamps[-1],
        })
    if not samples:
        return None, samples
    return RequestOverhead(
        pre_engine_s=max(0.0, statistics.median(x["pre_engine_s"] for x in samples)),
        post_engine_s=max(0.0, statistics.median(x["post_engine_s"] for x in samples)),
        source=f"median of {len(samples)} streamed chat requests at batch 1",
    ), samples


async def _decode_step(
    client: _Client, b: int, p: int, plan: CalibrationPlan
) -> tuple[Measurement, float] | None:
    """``b`` concurrent ``p``-token prompts; the mean token gap once all decode."""
    runs = await asyncio.gather(*[client.stream(p, plan.decode_tokens) for _ in range(b)])
    lo = max(2, plan.decode_tokens // 4)
    hi = plan.decode_tokens - 2
    firsts = [stamps[0] for _, stamps in runs if stamps]
    if len(firsts) < b:
        return None
    all_first = max(firsts)
    gaps = [
        stamps[k] - stamps[k - 1]
        for _, stamps in runs
        for k in range(lo, min(hi, len(stamps)))
        if stamps[k - 1] >= all_first
    ]
    if not gaps:
        return None
    # The mean, not the median: the simulator needs the time the steps really add up to, and
    # the occasional slow step (the API server's output processing, a GC pause) is part of it.
    step = statistics.fmean(gaps)
    mid = (lo + hi) // 2
    return Measurement("decode", BatchShape([], [], b, b * (p + mid)), step), step


def run_calibration(
    base_url: str, plan: CalibrationPlan, model: str | None = None, budget_s: float = 240.0
) -> CalibrationResult:
    return asyncio.run(_calibrate(base_url, plan, model, budget_s))
