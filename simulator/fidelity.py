"""Fidelity: replay a live run's request logs through the simulator and compare latencies.

``lengthwise bench live`` runs the real gateway (``fcfs`` and ``sjf`` arms) in
front of one vLLM CPU worker (``lengthwise worker --max-num-seqs 16 --no-prefix-caching``); each gateway arm
writes a JSONL request log. For every log this module replays *exactly those
requests* through the simulated gateway and engine and compares mean / p50 /
p90 E2E and TTFT with what the gateway measured. The target: mean E2E and mean
TTFT within 10 %.

What is replayed, and why (nothing here is fitted to the live numbers):

* **Requests.** Prompt tokens as vLLM's usage counted them (the chat template
  is already inside), the actual completion tokens, the logged point
  prediction (``predicted_tokens``, so ``sjf`` orders as the live gateway
  did), the policy named in the records, the same admission limit and aging.
* **Engine.** The bench worker's settings (:func:`bench_worker_engine`): 16
  sequences, chunked prefill off (budget = ``max_model_len``), vLLM's
  priority queue (the gateway passes its rank as ``priority``), CPU block size
  128. The step cost is the model ``simulate calibrate`` fitted on that worker.
* **Per-request overhead** (not part of any engine step): HTTP, chat template
  and tokenisation before the engine, detokenisation/SSE and the response tail
  after it. ``simulate calibrate`` measures it on the chat path
  (:class:`simulator.calibrate.RequestOverhead`); it is replayed as a dispatch
  delay (the request reaches the engine's queue that much after the gateway
  dispatches it) and a response delay (the gateway frees the slot and the
  client sees the end that much after the last token). The gateway's own hop
  is an explicit extra (``gateway_overhead_s``; ``lengthwise bench overhead``
  measures it).
* **Clock origin.** The gateway's ``ttft_s`` / ``e2e_s`` count from the moment
  its handler started, *before* the length prediction. Current logs stamp
  ``arrival_unix`` at that moment too and record ``queue_entry_s`` (the
  prediction time): each request is then replayed at its true arrival and enters
  the queue ``queue_entry_s`` later, whatever ``client_arrivals`` says. Older logs
  stamped ``arrival_unix`` *after* the prediction (the queue entry), and lack
  ``queue_entry_s``; for them, with ``client_arrivals="burst"`` (the
  client sent every request at once, as ``bench live --arrivals burst`` does)
  every request is replayed as arriving at t = 0, in log order, and enters the
  queue at its logged ``arrival_unix`` offset: the prediction delay is replayed
  and counted, as live. With ``"logged"`` (Poisson runs) requests arrive at
  their ``arrival_unix`` offsets; the prediction time is then not in the
  simulated latencies (it is not logged), a small bias at low load.
* **TTFT** is compared on the streaming requests only (the gateway measures it
  only there); E2E on every request that finished normally.

Not modelled (say so when a result misses): CPU contention between the gateway
(predictor, SSE relay) and the worker on a small machine, and sampling-time
differences between calibration probes and live requests beyond what the
probes' sampling settings reproduce.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np

from lengthwise.common.cpu_worker import BENCH_WORKER_MAX_NUM_SEQS, CPU_BLOCK_SIZE
from server.policy import (
    AdmissionLimits,
    EngineQueueMode,
    PointEstimate,
    PolicyConfig,
    PolicyName,
)
from server.request_log import read_request_log

from .calibrate import RequestOverhead
from .latency import StepLatencyModel
from .replica import EngineConfig
from .simulation import SimConfig, SimResult, run_simulation
from .trace import SimRequest

#: SmolLM2-135M's KV bytes per token in bf16 (30 layers x 2 x 3 KV heads x 64 dims x
#: 2 bytes). The worker log prints the real KV figure ("KV cache size: N tokens"); the
#: bench workload (16 sequences of at most a few hundred tokens) never fills it.
SMOLLM2_KV_BYTES_PER_TOKEN = 23_040
#: spacing of same-instant client arrivals in burst mode: keeps the log's order
#: as the FCFS / deadline tie-break without moving anything measurably
_BURST_SPACING_S = 1e-6


class ClientArrivals(StrEnum):
    BURST = "burst"
    LOGGED = "logged"


#: The gateway admission limit of the live CPU runs this module replays
#: (``lengthwise bench live --max-sequences 16``).
BENCH_ADMISSION_MAX_SEQUENCES = 16


def bench_worker_config():
    """The bench worker's ``WorkerConfig``: what ``lengthwise worker --max-num-seqs 16
    --no-prefix-caching`` runs (``lengthwise.common.cpu_worker``), everything else the
    worker's defaults, so a change there follows here."""
    from lengthwise.worker.process import WorkerConfig

    return WorkerConfig(model_path=Path("."), max_num_seqs=BENCH_WORKER_MAX_NUM_SEQS,
                        prefix_caching=False)


def bench_worker_engine() -> tuple[EngineConfig, int]:
    """The bench worker's engine settings (:func:`bench_worker_config`) and its
    ``max_model_len``: with chunked prefill off the worker raises
    ``max_num_batched_tokens`` to ``max(max_model_len, 2048)``; its KV cache is whole
    ``CPU_BLOCK_SIZE`` blocks of ``VLLM_CPU_KVCACHE_SPACE``."""
    worker = bench_worker_config()
    kv_tokens = worker.kv_cache_space_gib * 2**30 // SMOLLM2_KV_BYTES_PER_TOKEN
    engine = EngineConfig(
        max_num_seqs=worker.max_num_seqs,
        max_num_batched_tokens=worker.max_num_batched_tokens or EngineConfig().max_num_batched_tokens,
        kv_cache_tokens=kv_tokens // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE,
        block_size=CPU_BLOCK_SIZE,
        queue_mode=EngineQueueMode(worker.scheduling_policy),
        chunked_prefill=worker.chunked_prefill,
        prefix_caching=worker.prefix_caching,
        # the committed CPU replays were made with the synchronous loop, which is what
        # vLLM's CPU backend runs
        async_scheduling=False,
    )
    return engine, worker.max_model_len


@dataclass(frozen=True)
class LiveSetup:
    """How the live run was deployed (engine, gateway) and what the replay adds per request."""

    engine: EngineConfig
    max_model_len: int
    #: the gateway's ``--max-sequences-per-worker`` (``bench live --max-sequences``)
    admission_max_sequences: int | None
    aging_s_per_token: float = PolicyConfig().aging_s_per_token
    point_estimate: PointEstimate = PointEstimate.MEAN
    #: the live CPU runs replayed here ranked by output tokens alone (their gateway
    #: predates the prompt-token weight), so replays do too
    prompt_token_weight: float = 0.0
    client_arrivals: ClientArrivals = ClientArrivals.BURST
    overhead: RequestOverhead = field(default_factory=RequestOverhead)
    #: the gateway's own hop per request, added before the engine
    gateway_overhead_s: float = 0.0
    tolerance: float = 0.10

    @classmethod
    def bench_defaults(cls, **changes) -> LiveSetup:
        """``bench live`` defaults in front of ``lengthwise worker --max-num-seqs 16 --no-prefix-caching``."""
        engine, max_len = bench_worker_engine()
        base = {
            "engine": engine,
            "max_model_len": max_len,
            "admission_max_sequences": BENCH_ADMISSION_MAX_SEQUENCES,
            "aging_s_per_token": PolicyConfig().aging_s_per_token,
            "point_estimate": PolicyConfig().point_estimate,
        }
        base.update(changes)
        return cls(**base)


@dataclass(frozen=True)
class LiveOverrides:
    """What the command line changes in :meth:`LiveSetup.bench_defaults` (``None``: keep)."""

    client_arrivals: ClientArrivals = ClientArrivals.BURST
    tolerance: float = 0.10
    gateway_overhead_s: float = 0.0
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_tokens: int | None = None
    block_size: int | None = None
    chunked_prefill: bool | None = None
    engine_queue: str | None = None
    max_model_len: int | None = None
    admission_max_seqs: int | None = None
    aging_s_per_token: float | None = None
    request_overhead_s: float | None = None
    response_overhead_s: float | None = None


def live_setup(overrides: LiveOverrides, cost_model: Path) -> LiveSetup:
    """The bench run's setup with the overrides applied; the per-request overhead comes
    from the calibrated cost model's JSON unless given."""
    from .calibrate import load_request_overhead

    o = overrides
    setup = LiveSetup.bench_defaults(client_arrivals=o.client_arrivals, tolerance=o.tolerance,
                                     gateway_overhead_s=o.gateway_overhead_s)
    engine_changes = {k: v for k, v in {
        "max_num_seqs": o.max_num_seqs, "max_num_batched_tokens": o.max_num_batched_tokens,
        "kv_cache_tokens": o.kv_cache_tokens, "block_size": o.block_size,
        "chunked_prefill": o.chunked_prefill,
    }.items() if v is not None}
    if o.engine_queue is not None:
        engine_changes["queue_mode"] = EngineQueueMode(o.engine_queue)
    if o.max_model_len is not None:
        setup = replace(setup, max_model_len=o.max_model_len)
        if o.max_num_batched_tokens is None and not setup.engine.chunked_prefill:
            # vLLM raises the budget to the model length when chunked prefill is off
            engine_changes["max_num_batched_tokens"] = replace(
                bench_worker_config(), max_model_len=o.max_model_len).max_num_batched_tokens
    setup = replace(setup, engine=replace(setup.engine, **engine_changes))
    if o.admission_max_seqs is not None:
        setup = replace(setup, admission_max_sequences=o.admission_max_seqs)
    if o.aging_s_per_token is not None:
        setup = replace(setup, aging_s_per_token=o.aging_s_per_token)
    measured = (load_request_overhead(cost_model) if Path(cost_model).suffix == ".json"
                else None) or RequestOverhead()
    given = o.request_overhead_s is not None or o.response_overhead_s is not None
    overhead = RequestOverhead(
        measured.pre_engine_s if o.request_overhead_s is None else o.request_overhead_s,
        measured.post_engine_s if o.response_overhead_s is None else o.response_overhead_s,
        "command line" if given else measured.source,
    )
    return replace(setup, overhead=overhead)


@dataclass(frozen=True)
class LiveRequest:
    """One finished request of a gateway log, with what the gateway measured."""

    request_id: str
    arrival_unix: float
    prompt_tokens: int
    completion_tokens: int
    predicted_tokens: float | None
    stream: bool
    ttft_s: float | None
    e2e_s: float
    queue_wait_s: float | None = None
    queue_entry_s: float | None = None


@dataclass(frozen=True)
class LiveLog:
    path: Path
    policy: PolicyName
    requests: list[LiveRequest]
    skipped: int

    @property
    def arm(self) -> str:
        name = self.path.name
        for suffix in (".jsonl", ".requests"):
            name = name.removesuffix(suffix)
        return name


def load_live_log(path: str | Path) -> LiveLog:
    """Finished (``status == "ok"``) requests of one gateway log; one policy per log."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"request log not found: {path}")
    records = read_request_log(path)
    ok, skipped, policies = [], 0, set()
    for rec in records:
        if (rec.get("status") != "ok" or rec.get("prompt_tokens") is None
                or rec.get("completion_tokens") is None or rec.get("e2e_s") is None):
            skipped += 1
            continue
        policies.add(rec.get("policy"))
        ok.append(LiveRequest(
            request_id=str(rec["request_id"]),
            arrival_unix=float(rec["arrival_unix"]),
            prompt_tokens=int(rec["prompt_tokens"]),
            completion_tokens=int(rec["completion_tokens"]),
            predicted_tokens=(None if rec.get("predicted_tokens") is None
                              else float(rec["predicted_tokens"])),
            stream=bool(rec.get("stream")),
            ttft_s=None if rec.get("ttft_s") is None else float(rec["ttft_s"]),
            e2e_s=float(rec["e2e_s"]),
            queue_wait_s=None if rec.get("queue_wait_s") is None else float(rec["queue_wait_s"]),
            queue_entry_s=(None if rec.get("queue_entry_s") is None
                           else float(rec["queue_entry_s"])),
        ))
    if not ok:
        raise ValueError(f"{path}: no finished requests to replay")
    if len(policies) != 1:
        raise ValueError(f"{path}: one policy per log expected, found {sorted(map(str, policies))}")
    try:
        policy = PolicyName(policies.pop())
    except ValueError as exc:
        raise ValueError(f"{path}: unknown policy in the log: {exc}") from None
    if policy != PolicyName.FCFS and any(r.predicted_tokens is None for r in ok):
        raise ValueError(f"{path}: {policy} records need predicted_tokens to be replayed")
    ok.sort(key=lambda r: r.arrival_unix)
    return LiveLog(path, policy, ok, skipped)


def replay_requests(log: LiveLog, arrivals: ClientArrivals) -> list[SimRequest]:
    """The log's requests as simulator input (see the module docstring on the clock origin)."""
    t0 = log.requests[0].arrival_unix
    out = []
    for i, r in enumerate(log.requests):
        queued_at = r.arrival_unix - t0
        if r.queue_entry_s is not None:
            # Newer logs stamp the true arrival and say how long the prediction took.
            arrival, delay = queued_at, r.queue_entry_s
        elif arrivals == ClientArrivals.BURST:
            arrival = i * _BURST_SPACING_S
            delay = max(0.0, queued_at - arrival)
        else:
            arrival, delay = queued_at, 0.0
        out.append(SimRequest(
            request_id=r.request_id,
            arrival_time=arrival,
            prompt_tokens=r.prompt_tokens,
            output_tokens=max(1, r.completion_tokens),
            predicted_tokens=r.predicted_tokens,
            gateway_delay_s=delay,
        ))
    return out


def sim_config(setup: LiveSetup, policy: PolicyName) -> SimConfig:
    return SimConfig(
        engine=setup.engine,
        workers=1,
        policy=PolicyConfig(policy, setup.point_estimate, setup.aging_s_per_token,
                            setup.prompt_token_weight),
        admission=AdmissionLimits.fixed(setup.admission_max_sequences),
        max_model_len=setup.max_model_len,
        dispatch_delay_s=setup.overhead.pre_engine_s + setup.gateway_overhead_s,
        response_delay_s=setup.overhead.post_engine_s,
    )


def _stats_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    if not values_s:
        return {"mean": None, "p50": None, "p90": None}
    arr = np.asarray(values_s, dtype=float) * 1000.0
    p50, p90 = np.percentile(arr, [50, 90])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90)}


def _rel(sim: dict, live: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in ("mean", "p50", "p90"):
        a, b = sim[k], live[k]
        out[k] = None if a is None or b is None or b == 0 else (a - b) / b
    return out


def _compare(live: list[float], sim: list[float]) -> dict:
    live_s, sim_s = _stats_ms(live), _stats_ms(sim)
    return {"n": len(live), "live": live_s, "sim": sim_s, "rel_err": _rel(sim_s, live_s)}


def _within(comparison: dict, tolerance: float) -> bool:
    err = comparison["rel_err"]["mean"]
    return err is not None and math.isfinite(err) and abs(err) <= tolerance


def compare_arm(log: LiveLog, result: SimResult, setup: LiveSetup) -> dict:
    """Live vs simulated latencies of one arm, on the same requests."""
    by_id = {rec.request.request_id: rec for rec in result.records}
    e2e_live, e2e_sim, ttft_live, ttft_sim, wait_live, wait_sim = [], [], [], [], [], []
    rows = []
    not_replayed = 0
    for r in log.requests:
        rec = by_id[r.request_id]
        seq = rec.seq
        if seq is None or seq.first_token is None or rec.completion_time is None:
            not_replayed += 1
            continue
        arrival = rec.request.arrival_time
        sim_e2e, sim_ttft = rec.completion_time - arrival, seq.first_token - arrival
        sim_wait = rec.dispatch_time - arrival - rec.request.gateway_delay_s
        e2e_live.append(r.e2e_s)
        e2e_sim.append(sim_e2e)
        if r.stream and r.ttft_s is not None:
            ttft_live.append(r.ttft_s)
            ttft_sim.append(sim_ttft)
        # Gateway queue wait (dispatch - queue entry): a diagnostic, not a target.
        if r.queue_wait_s is not None:
            wait_live.append(r.queue_wait_s)
            wait_sim.append(sim_wait)
        rows.append({
            "request_id": r.request_id, "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens, "predicted_tokens": r.predicted_tokens,
            "queued_at_s": arrival + rec.request.gateway_delay_s,
            "live_ttft_s": r.ttft_s, "sim_ttft_s": sim_ttft,
            "live_e2e_s": r.e2e_s, "sim_e2e_s": sim_e2e,
            "live_queue_wait_s": r.queue_wait_s, "sim_queue_wait_s": sim_wait,
        })
    e2e = _compare(e2e_live, e2e_sim)
    ttft = _compare(ttft_live, ttft_sim)
    checks = {"e2e_mean": _within(e2e, setup.tolerance)}
    if ttft_live:
        checks["ttft_mean"] = _within(ttft, setup.tolerance)
    return {
        "log": str(log.path),
        "policy": log.policy.value,
        "requests": len(log.requests),
        "skipped_not_ok": log.skipped,
        "not_replayed": not_replayed,
        "streaming": len(ttft_live),
        "e2e_ms": e2e,
        "ttft_ms": ttft,
        "queue_wait_ms": {"live": _stats_ms(wait_live), "sim": _stats_ms(wait_sim)},
        "engine": {
            "steps": sum(r.num_steps for r in result.replicas),
            "preemptions": result.preemptions,
            "peak_kv_usage": result.peak_kv_usage,
            "simulated_s": result.end_time,
        },
        "checks": checks,
        "pass": bool(checks) and all(checks.values()) and not_replayed == 0,
        "per_request": rows,
    }


def run_fidelity(
    log_paths: Sequence[str | Path],
    latency: StepLatencyModel,
    setup: LiveSetup,
) -> dict:
    """Replay every log (one arm each) and compare; the report document."""
    if not log_paths:
        raise ValueError("give at least one request log")
    arms: dict[str, dict] = {}
    for path in log_paths:
        log = load_live_log(path)
        requests = replay_requests(log, setup.client_arrivals)
        result = run_simulation(requests, [r.predicted_tokens or 0.0 for r in requests],
                                sim_config(setup, log.policy), latency)
        name = log.arm
        while name in arms:
            name += "'"
        arms[name] = compare_arm(log, result, setup)
    return {
        "target": {"metric": "mean E2E and mean TTFT", "max_abs_rel_err": setup.tolerance},
        "pass": all(a["pass"] for a in arms.values()),
        "arms": arms,
        "setup": {
            "engine": {**asdict(setup.engine), "queue_mode": setup.engine.queue_mode.value},
            "max_model_len": setup.max_model_len,
            "admission_max_sequences": setup.admission_max_sequences,
            "aging_s_per_token": setup.aging_s_per_token,
            "point_estimate": setup.point_estimate.value,
            "client_arrivals": setup.client_arrivals.value,
            "request_overhead": setup.overhead.to_dict(),
            "gateway_overhead_s": setup.gateway_overhead_s,
        },
        "cost_model": latency.describe(),
    }


@dataclass(frozen=True)
class ArmReplay:
    """What one policy did with one set of requests in the simulator."""

    e2e_mean_s: float
    makespan_s: float
    finished: int


def replay_arms(
    requests: Sequence[SimRequest],
    arms: dict[str, tuple[PolicyName, Sequence[float]]],
    setup: LiveSetup,
    latency: StepLatencyModel,
) -> dict[str, ArmReplay]:
    """Each arm (a policy and the values it ranks by) replayed on the same requests."""
    out = {}
    for name, (policy, ranking) in arms.items():
        result = run_simulation(requests, ranking, sim_config(setup, policy), latency)
        done = [r for r in result.records if not r.dropped and r.completion_time is not None]
        out[name] = ArmReplay(
            e2e_mean_s=statistics.fmean(r.completion_time - r.request.arrival_time
                                        for r in done),
            makespan_s=max(r.completion_time for r in done),
            finished=len(done),
        )
    return out


def policy_what_if(
    log_path: str | Path,
    latency: StepLatencyModel,
    setup: LiveSetup,
    admissions: Sequence[int | None],
) -> dict:
    """How much ordering can buy on exactly these requests: the calibrated replay of one
    log under ``fcfs``, ``sjf-aged`` with the logged predictions, and ``sjf-aged`` with the
    true lengths (the oracle), per gateway admission limit.

    Mean E2E is reported relative to ``fcfs`` at the same admission limit. The oracle's
    ratio is the floor that no predictor can beat on this workload and worker.
    """
    log = load_live_log(log_path)
    requests = replay_requests(log, setup.client_arrivals)
    arms = {
        "fcfs": (PolicyName.FCFS, [0.0] * len(requests)),
        "sjf_logged_predictions": (PolicyName.SJF_AGED,
                                   [r.predicted_tokens or 0.0 for r in requests]),
        "sjf_oracle": (PolicyName.SJF_AGED, [float(r.output_tokens) for r in requests]),
    }
    rows = []
    for admission in admissions:
        adm_setup = replace(setup, admission_max_sequences=admission)
        means = {name: replay.e2e_mean_s
                 for name, replay in replay_arms(requests, arms, adm_setup, latency).items()}
        rows.append({
            "admission_max_sequences": admission,
            "e2e_mean_ms": {k: v * 1000.0 for k, v in means.items()},
            "e2e_mean_over_fcfs": {k: v / means["fcfs"] for k, v in means.items()},
        })
    return {"log": str(log_path), "requests": len(requests), "rows": rows}


def format_table(report: dict) -> str:
    """A plain-text table: one row per arm and metric."""
    head = (f"{'arm':<16} {'metric':<6} {'n':>4} {'live mean':>10} {'sim mean':>10} {'err':>7} "
            f"{'live p50':>9} {'sim p50':>9} {'live p90':>9} {'sim p90':>9} {'err p90':>8}  ok")
    lines = [head, "-" * len(head)]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:+.1f}%"

    for arm, a in report["arms"].items():
        for metric, key in (("e2e", "e2e_ms"), ("ttft", "ttft_ms")):
            c = a[key]
            ok = a["checks"].get(f"{metric}_mean")
            lines.append(
                f"{arm:<16} {metric:<6} {c['n']:>4} {ms(c['live']['mean']):>10} "
                f"{ms(c['sim']['mean']):>10} {pct(c['rel_err']['mean']):>7} "
                f"{ms(c['live']['p50']):>9} {ms(c['sim']['p50']):>9} {ms(c['live']['p90']):>9} "
                f"{ms(c['sim']['p90']):>9} {pct(c['rel_err']['p90']):>8}  "
                f"{'-' if ok is None else 'yes' if ok else 'NO'}"
            )
    lines.append(f"overall: {'PASS' if report['pass'] else 'FAIL'} "
                 f"(|mean error| <= {report['target']['max_abs_rel_err']:.0%})")
    return "\n".join(lines)
