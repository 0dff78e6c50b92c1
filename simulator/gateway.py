"""The simulated gateway: the live gateway's policy module on virtual time.

All ordering, admission and routing decisions are made by ``server.policy``
(``PolicyQueue``, ``plan_dispatch``, ``engine_priority``); this module only
moves requests and keeps the per-worker in-flight counts those functions read.
Each worker's engine reports its capacity (``EngineView``: its ``max_num_seqs``
and KV tokens) from the start, as a live vLLM does once scraped. With
unlimited admission every request goes straight to a worker's own waiting
queue, as with plain vLLM; the policy's rank still reaches the engine as
vLLM's ``priority``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.policy import (
    AdmissionLimits,
    EngineView,
    PolicyQueue,
    QueuedRequest,
    QueueFull,
    SortKey,
    WorkerLoad,
    engine_priority,
    plan_dispatch,
)

from .events import EventLoop, Phase
from .replica import Replica, Seq
from .trace import SimRequest


@dataclass(slots=True)
class RequestRecord:
    """Everything the report needs about one request (times in seconds)."""

    request: SimRequest
    predicted_tokens: float
    #: the predicted p90 output, for the KV footprint admission counts (``None``: the
    #: point prediction stands in for it)
    predicted_p90_tokens: float | None = None
    #: the request as the gateway's queue and the worker's load count it
    queued: QueuedRequest | None = None
    enqueue_time: float | None = None
    dispatch_time: float | None = None
    worker_id: str | None = None
    priority: int | None = None
    seq: Seq | None = None
    dropped: str | None = None
    #: when the client saw the response end: engine completion + ``response_delay_s``
    completion_time: float | None = None

    @property
    def predicted_kv_output_tokens(self) -> float:
        p90 = self.predicted_p90_tokens
        return p90 if p90 is not None and math.isfinite(p90) else (
            self.predicted_tokens if math.isfinite(self.predicted_tokens) else 0.0)


class SimGateway:
    """Gateway queue + admission + routing over simulated replicas."""

    def __init__(
        self,
        queue: PolicyQueue,
        limits: AdmissionLimits,
        replicas: list[Replica],
        max_model_tokens: int,
        epoch: float = 0.0,
        loop: EventLoop | None = None,
        dispatch_delay_s: float = 0.0,
        response_delay_s: float = 0.0,
    ) -> None:
        """``dispatch_delay_s``: from the gateway's dispatch to the request being in
        the engine's waiting queue (HTTP, chat template, tokenisation);
        ``response_delay_s``: from the engine's last token to the end of the
        response, when the gateway frees the worker slot. Both need ``loop``."""
        if (dispatch_delay_s or response_delay_s) and loop is None:
            raise ValueError("request delays need the event loop")
        if dispatch_delay_s < 0 or response_delay_s < 0:
            raise ValueError("request delays must be non-negative")
        self.loop = loop
        self.dispatch_delay_s = dispatch_delay_s
        self.response_delay_s = response_delay_s
        self.queue = queue
        self.limits = limits
        self.replicas = {r.worker_id: r for r in replicas}
        self.max_model_tokens = max_model_tokens
        self.epoch = epoch
        self._loads = {
            r.worker_id: WorkerLoad(r.worker_id, True, 0, 0.0, engine=EngineView(
                max_running=r.config.max_num_seqs,
                kv_capacity_tokens=float(r.config.kv_cache_tokens)))
            for r in replicas
        }
        self._records: dict[str, RequestRecord] = {}
        self._keys: dict[str, SortKey] = {}
        self.dispatch_order: list[str] = []
        self.completed = 0
        self.dropped = 0
        for r in replicas:
            r.on_finish = self._on_finish

    @property
    def records(self) -> dict[str, RequestRecord]:
        return self._records

    @property
    def in_flight(self) -> int:
        return sum(load.in_flight_sequences for load in self._loads.values())

    def on_arrival(self, now: float, record: RequestRecord) -> None:
        req = record.request
        self._records[req.request_id] = record
        if max(1, req.prompt_tokens) + req.output_tokens > self.max_model_tokens:
            # vLLM rejects a request whose prompt + max_tokens exceed
            # max_model_len; here that is the KV capacity, since a lone
            # request that cannot fit would otherwise block its worker forever.
            record.dropped = "exceeds max model length / KV capacity"
            self.dropped += 1
            return
        qr = QueuedRequest(
            request_id=req.request_id,
            arrival_time=req.arrival_time,
            predicted_tokens=record.predicted_tokens,
            prompt_tokens=req.prompt_tokens,
            kv_tokens=req.prompt_tokens + record.predicted_kv_output_tokens,
        )
        record.queued = qr
        try:
            self._keys[req.request_id] = self.queue.push(qr)
        except QueueFull:
            record.dropped = "gateway queue full"
            self.dropped += 1
            return
        record.enqueue_time = now
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        for request, worker_id in plan_dispatch(self.queue, self._loads, self.limits):
            self._send(now, request, worker_id)

    def _send(self, now: float, qr: QueuedRequest, worker_id: str) -> None:
        record = self._records[qr.request_id]
        key = self._keys.pop(qr.request_id)
        priority = engine_priority(key, self.epoch)
        self._loads[worker_id] = self._loads[worker_id].plus(qr)
        req = record.request
        at_engine = now + self.dispatch_delay_s
        # vLLM needs at least one prompt token (traces may record 0)
        replica = self.replicas[worker_id]
        seq = Seq(req.request_id, max(1, req.prompt_tokens), req.output_tokens, priority,
                  at_engine, record, req.prefix_keys(replica.config.block_size))
        record.dispatch_time = now
        record.worker_id = worker_id
        record.priority = priority
        record.seq = seq
        self.dispatch_order.append(qr.request_id)
        if self.dispatch_delay_s and self.loop is not None:
            self.loop.schedule(at_engine, Phase.ARRIVAL,
                               lambda t, s: replica.add_request(s, t), seq)
        else:
            replica.add_request(seq, now)

    def _on_finish(self, replica: Replica, seq: Seq, now: float) -> None:
        if self.response_delay_s and self.loop is not None:
            self.loop.schedule(now + self.response_delay_s, Phase.STEP_END,
                               lambda t, s: self._release(replica.worker_id, s, t), seq)
        else:
            self._release(replica.worker_id, seq, now)

    def _release(self, worker_id: str, seq: Seq, now: float) -> None:
        """The response has ended: free the worker slot and dispatch the next request."""
        record: RequestRecord = seq.payload  # type: ignore[assignment]
        record.completion_time = now
        assert record.queued is not None
        self._loads[worker_id] = self._loads[worker_id].minus(record.queued)
        self.completed += 1
        if len(self.queue):
            self._dispatch(now)
