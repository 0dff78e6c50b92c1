"""Fidelity against a real vLLM run: replay its requests, compare TTFT, E2E and TPOT.

A run folder (LLMServingSim's ``bench`` output, e.g. ``shared/gpu_runs/...``) holds:

* ``vllm_requests.jsonl``: one request per line, ``input_toks``, ``output_toks`` and the
  engine's own timestamps ``queued_ts``, ``first_token_ts``, ``last_token_ts``;
* ``vllm_meta.json``: the engine arguments (``engine_kwargs``);
* ``config.json`` (optional): LLMServingSim's cluster config (GPU memory, utilisation).

The replay takes nothing from the run but what vLLM was told: each request's prompt and
output length and when it entered the engine, and the engine arguments (vLLM's defaults
where the run left one unset). Nothing is fitted to the run's timings. TTFT = first token
- queued, E2E = last token - queued, TPOT = (last - first) / (output - 1), as the run
defines them.

The KV cache size is what vLLM logged when the run recorded it (``kv_cache_tokens`` or
``num_gpu_blocks`` in ``vllm_meta.json``) or what the caller passes; otherwise it is
estimated the way LLMServingSim does (GPU memory x utilisation - weights, over the KV
bytes of one token), which ignores vLLM's activation reserve and so overstates it: give
the logged size for a run where memory binds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from server.policy import EngineQueueMode, PolicyConfig, PolicyName

from .latency import StepLatencyModel
from .replica import EngineConfig
from .simulation import SimConfig, SimResult, run_simulation
from .trace import SimRequest

#: The fidelity target: |relative error of the mean| of each metric within 5 %.
TOLERANCE = 0.05
METRICS = ("ttft", "e2e", "tpot")

#: (KV bytes per token, weight bytes) in bf16, for the KV-size estimate only.
_MODEL_MEMORY: dict[str, tuple[int, float]] = {
    # 32 layers x 2 (K, V) x 8 KV heads x 128 dims x 2 bytes; 8.03e9 parameters x 2 bytes
    "Llama-3.1-8B": (32 * 2 * 8 * 128 * 2, 8.03e9 * 2),
}


@dataclass(frozen=True)
class RunRequest:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    queued_s: float
    first_token_s: float
    last_token_s: float

    def latencies(self) -> dict[str, float | None]:
        tpot = ((self.last_token_s - self.first_token_s) / (self.output_tokens - 1)
                if self.output_tokens > 1 else None)
        return {"ttft": self.first_token_s - self.queued_s,
                "e2e": self.last_token_s - self.queued_s, "tpot": tpot}


@dataclass(frozen=True)
class VllmRun:
    folder: Path
    requests: list[RunRequest]
    engine_kwargs: dict
    meta: dict
    cluster: dict

    @classmethod
    def load(cls, folder: str | Path) -> VllmRun:
        folder = Path(folder)
        path = folder / "vllm_requests.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no vllm_requests.jsonl")
        requests = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                r = json.loads(line)
                requests.append(RunRequest(str(r["request_id"]), int(r["input_toks"]),
                                           int(r["output_toks"]), float(r["queued_ts"]),
                                           float(r["first_token_ts"]), float(r["last_token_ts"])))
        if not requests:
            raise ValueError(f"{path}: no requests")
        requests.sort(key=lambda r: r.queued_s)
        meta_path = folder / "vllm_meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        cluster_path = folder / "config.json"
        cluster = json.loads(cluster_path.read_text()) if cluster_path.is_file() else {}
        return cls(folder, requests, dict(meta.get("engine_kwargs") or {}), meta, cluster)

    @property
    def model(self) -> str:
        return str(self.engine_kwargs.get("model") or self.meta.get("model") or "")

    def sim_requests(self) -> list[SimRequest]:
        t0 = self.requests[0].queued_s
        return [SimRequest(r.request_id, r.queued_s - t0, r.prompt_tokens, r.output_tokens)
                for r in self.requests]

    def kv_cache_tokens(self, block_size: int) -> tuple[int, str]:
        """The KV capacity and where it came from."""
        for source in (self.meta, self.engine_kwargs):
            if source.get("kv_cache_tokens"):
                return int(source["kv_cache_tokens"]), "logged by vLLM (kv_cache_tokens)"
            if source.get("num_gpu_blocks"):
                return int(source["num_gpu_blocks"]) * block_size, "logged by vLLM (num_gpu_blocks)"
        name = self.model.split("/")[-1]
        memory = _MODEL_MEMORY.get(name)
        try:
            npu = self.cluster["nodes"][0]["instances"][0]["npu_mem"]
        except (KeyError, IndexError, TypeError):
            npu = None
        if memory is None or npu is None:
            raise ValueError(f"{self.folder}: the run does not record its KV cache size; "
                             "give --kv-cache-tokens (vLLM logs 'GPU KV cache size')")
        per_token, weights = memory
        free = float(npu["mem_size"]) * 2**30 * float(npu.get("mem_util", 0.9)) - weights
        tokens = int(free // per_token) // block_size * block_size
        return tokens, "estimate: GPU memory x utilisation - weights (LLMServingSim's rule)"

    def engine(self, kv_cache_tokens: int | None = None) -> tuple[EngineConfig, str]:
        """The engine as vLLM ran it (vLLM's defaults where the run set nothing)."""
        kw = self.engine_kwargs
        default = EngineConfig()
        block = int(kw.get("block_size") or default.block_size)
        if kv_cache_tokens is None:
            kv_cache_tokens, source = self.kv_cache_tokens(block)
        else:
            source = "given"
        policy = kw.get("scheduling_policy") or EngineQueueMode.FCFS.value
        engine = EngineConfig(
            max_num_seqs=int(kw.get("max_num_seqs") or default.max_num_seqs),
            max_num_batched_tokens=int(kw.get("max_num_batched_tokens")
                                       or default.max_num_batched_tokens),
            kv_cache_tokens=kv_cache_tokens,
            block_size=block,
            queue_mode=EngineQueueMode(policy),
            chunked_prefill=bool(kw.get("enable_chunked_prefill", True)),
            prefix_caching=bool(kw.get("enable_prefix_caching", True)),
            async_scheduling=bool(kw.get("async_scheduling", True)),
        )
        return engine, source


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float) * 1000.0
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def compare(run: VllmRun, result: SimResult) -> dict:
    """Real vs simulated TTFT, E2E and TPOT (ms) on the same requests."""
    by_id = {rec.request.request_id: rec for rec in result.records}
    real: dict[str, list[float]] = {m: [] for m in METRICS}
    sim: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in run.requests:
        rec = by_id[r.request_id]
        seq = rec.seq
        if seq is None or seq.finished is None or seq.first_token is None:
            raise ValueError(f"request {r.request_id} did not finish in the replay")
        arrival = rec.request.arrival_time
        sim_lat = {"ttft": seq.first_token - arrival, "e2e": seq.finished - arrival,
                   "tpot": ((seq.finished - seq.first_token) / (r.output_tokens - 1)
                            if r.output_tokens > 1 else None)}
        for m, v in r.latencies().items():
            if v is not None and sim_lat[m] is not None:
                real[m].append(v)
                sim[m].append(sim_lat[m])
    out = {}
    for m in METRICS:
        rs, ss = _stats(real[m]), _stats(sim[m])
        out[f"{m}_ms"] = {"n": len(real[m]), "real": rs, "sim": ss,
                          "rel_err": {k: (ss[k] - rs[k]) / rs[k] for k in rs}}
    return out


#: Engine-model pieces the ablation switches off one at a time, and all three together
#: (``sync_no_cache_no_skew``: a synchronous engine loop, no prefix cache, no attention skew).
ABLATIONS: dict[str, dict] = {
    "no_skew": {"skew": False},
    "no_async_scheduling": {"async_scheduling": False},
    "no_prefix_caching": {"prefix_caching": False},
    "sync_no_cache_no_skew": {"skew": False, "async_scheduling": False, "prefix_caching": False},
}


def replay(run: VllmRun, engine: EngineConfig, latency: StepLatencyModel) -> tuple[dict, SimResult]:
    config = SimConfig(engine=engine, policy=PolicyConfig(PolicyName.FCFS))
    requests = run.sim_requests()
    result = run_simulation(requests, [1.0] * len(requests), config, latency)
    return compare(run, result), result


def _summary(comparison: dict, result: SimResult) -> dict:
    return {
        **comparison,
        "mean_rel_err": {m: comparison[f"{m}_ms"]["rel_err"]["mean"] for m in METRICS},
        "preemptions": result.preemptions,
        "peak_kv_usage": result.peak_kv_usage,
        "engine_steps": sum(r.num_steps for r in result.replicas),
        "sim_wall_s": result.sim_wall_s,
    }


def fidelity_report(run: VllmRun, latency_for, kv_cache_tokens: int | None = None,
                    ablation: bool = True) -> dict:
    """The replay against the run, plus each ablation; ``latency_for(skew)`` builds the
    cost model with or without the profile's skew coefficient."""
    engine, kv_source = run.engine(kv_cache_tokens)
    latency = latency_for(True)
    comparison, result = replay(run, engine, latency)
    report = {
        "run": str(run.folder),
        "model": run.model,
        "vllm_version": run.meta.get("vllm_version"),
        "requests": len(run.requests),
        "engine": {**asdict(engine), "queue_mode": engine.queue_mode.value},
        "kv_cache_source": kv_source,
        "cost_model": latency.describe(),
        "tolerance": TOLERANCE,
        "replay": _summary(comparison, result),
    }
    report["pass"] = all(abs(v) <= TOLERANCE for v in report["replay"]["mean_rel_err"].values())
    if ablation:
        report["ablations"] = {}
        for name, change in ABLATIONS.items():
            engine_change = {k: v for k, v in change.items() if k != "skew"}
            cmp_, res = replay(run, replace(engine, **engine_change),
                               latency_for(change.get("skew", True)))
            report["ablations"][name] = _summary(cmp_, res)
    return report


def format_report(report: dict) -> str:
    rows = [("replay", report["replay"])] + list(report.get("ablations", {}).items())
    lines = [f"{'engine model':<22} {'TTFT':>8} {'E2E':>8} {'TPOT':>8} {'preempt':>8}"]
    for name, s in rows:
        err = s["mean_rel_err"]
        lines.append(f"{name:<22} {err['ttft']:>+8.1%} {err['e2e']:>+8.1%} {err['tpot']:>+8.1%} "
                     f"{s['preemptions']:>8}")
    lines.append(f"mean error within {report['tolerance']:.0%}: "
                 f"{'PASS' if report['pass'] else 'FAIL'}")
    return "\n".join(lines)
