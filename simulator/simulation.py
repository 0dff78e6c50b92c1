"""Wires trace, gateway, replicas and cost model onto one event loop and runs it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.policy import UNLIMITED, AdmissionLimits, PolicyConfig, PolicyQueue, make_policy

from .events import EventLoop, Phase
from .gateway import RequestRecord, SimGateway
from .latency import StepLatencyModel
from .replica import EngineConfig, Replica
from .trace import SimRequest


@dataclass(frozen=True)
class SimConfig:
    """One simulated deployment: N identical vLLM workers behind the gateway."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    workers: int = 1
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig())
    #: what the gateway lets into each worker; ``UNLIMITED`` (the default) is plain
    #: vLLM: every request queues in the engine. ``AdmissionLimits()`` is the gateway's
    #: default (admission that follows the engine).
    admission: AdmissionLimits = UNLIMITED
    #: gateway queue bound (None = unbounded); a full queue drops the request
    queue_capacity: int | None = None
    #: longest prompt + output a worker accepts (vLLM ``max_model_len``);
    #: None = the KV capacity of one worker
    max_model_len: int | None = None
    #: keep a record per engine step (tests use it for invariants)
    record_steps: bool = False
    #: advance steady pure-decode stretches in one pass (exact; see replica.py)
    fast_forward: bool = True
    #: per-request time from gateway dispatch to the engine's waiting queue
    #: (HTTP, chat template, tokenisation; ``simulate calibrate`` measures it)
    dispatch_delay_s: float = 0.0
    #: per-request time from the engine's last token to the end of the response
    response_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")


@dataclass
class SimResult:
    config: SimConfig
    records: list[RequestRecord]
    replicas: list[Replica]
    gateway: SimGateway
    sim_wall_s: float
    end_time: float
    events: int
    #: output tokens the engines had generated when the last request arrived: the
    #: throughput while the trace was offered, without the drain after it
    tokens_by_last_arrival: int = 0
    last_arrival: float = 0.0

    @property
    def preemptions(self) -> int:
        return sum(r.num_preemptions for r in self.replicas)

    @property
    def peak_kv_usage(self) -> float:
        return max(r.peak_used_blocks / r.total_blocks for r in self.replicas)


ProgressHook = Callable[[int, float], None]


def run_simulation(
    requests: Sequence[SimRequest],
    predicted_tokens: Sequence[float],
    config: SimConfig,
    latency: StepLatencyModel,
    progress: ProgressHook | None = None,
    predicted_p90_tokens: Sequence[float] | None = None,
) -> SimResult:
    """Replay ``requests`` (sorted by arrival) with the given per-request predictions
    (the point the policy ranks by; ``predicted_p90_tokens``, when given, is what the
    gateway's admission counts for each request's KV footprint).

    ``progress(completed_or_dropped, virtual_time)`` is called between slices
    of virtual time when given.
    """
    if len(requests) != len(predicted_tokens) or (
            predicted_p90_tokens is not None and len(predicted_p90_tokens) != len(requests)):
        raise ValueError("one prediction per request is required")
    wall0 = time.perf_counter()
    loop = EventLoop()
    replicas = [
        Replica(f"w{i}", config.engine, latency, loop, on_finish=lambda *_: None,
                record_steps=config.record_steps, fast_forward=config.fast_forward)
        for i in range(config.workers)
    ]
    queue = PolicyQueue(make_policy(config.policy), capacity=config.queue_capacity)
    max_len = config.max_model_len or config.engine.num_blocks * config.engine.block_size
    gateway = SimGateway(queue, config.admission, replicas, max_model_tokens=max_len,
                         loop=loop, dispatch_delay_s=config.dispatch_delay_s,
                         response_delay_s=config.response_delay_s)
    records = []
    seen: set[str] = set()
    p90s = predicted_p90_tokens if predicted_p90_tokens is not None else [None] * len(requests)
    for req, pred, p90 in zip(requests, predicted_tokens, p90s):
        if req.request_id in seen:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        seen.add(req.request_id)
        record = RequestRecord(req, float(pred), None if p90 is None else float(p90))
        records.append(record)
        loop.schedule(req.arrival_time + req.gateway_delay_s, Phase.ARRIVAL, gateway.on_arrival,
                      record)
    snapshot = {"tokens": 0}
    last_arrival = max((r.arrival_time for r in requests), default=0.0)
    if requests:
        # STEP_START phase: after every same-time step end and arrival
        loop.schedule(last_arrival, Phase.STEP_START, lambda _t, _p: snapshot.__setitem__(
            "tokens", sum(r.generated_tokens for r in replicas)))
    if progress is None:
        loop.run()
    else:
        horizon = requests[-1].arrival_time if requests else 0.0
        slice_s = max(horizon / 200.0, 1.0)
        t = 0.0
        while len(loop):
            t += slice_s
            loop.run(until=t)
            progress(gateway.completed + gateway.dropped, loop.now)
    return SimResult(
        config=config,
        records=records,
        replicas=replicas,
        gateway=gateway,
        sim_wall_s=time.perf_counter() - wall0,
        end_time=loop.now,
        events=loop.events_handled,
        tokens_by_last_arrival=snapshot["tokens"],
        last_arrival=last_arrival,
    )
