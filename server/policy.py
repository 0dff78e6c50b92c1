"""The scheduling policy: one module shared by the live gateway and the simulator.

Everything here is pure: no I/O, no clock reads, no framework types. Time is
always a parameter (seconds on whatever clock the caller uses), so the same
code orders requests on the gateway's wall clock and on the simulator's
virtual clock.

Ordering keys
-------------
Every policy maps a request to a *static* sort key, fixed when the request is
enqueued; smaller keys are served first. Keys end in ``(arrival_time,
request_id)`` so the order is total and deterministic.

* ``fcfs``: ``arrival_time``.
* ``sjf``: the predicted length (mean, p50 or p90), no aging. Long requests can
  starve under a steady stream of short ones; kept for research comparisons.
* ``sjf-aged`` (the gateway default): a virtual deadline
  ``arrival_time + aging_s_per_token * predicted_tokens``. A request is
  allowed to wait in proportion to its own predicted size, in the spirit of
  highest-response-ratio-next: short jobs get short deadlines and go first,
  but a job can only be overtaken by requests that arrive before its deadline.
  Linear aging ``pred - (now - arrival) / a`` ranks exactly like this key, so
  the heap stays valid without re-sorting as time passes.

Worst-case queue wait of ``sjf-aged``
-------------------------------------
A request R (arrival ``a``, prediction ``s``) has deadline ``d = a + α·s``
(``α = aging_s_per_token``; predictions are at least 1 token). A later request
can only precede R if its own deadline is smaller, which needs it to arrive
before ``d``. So after time ``d`` nothing new overtakes R, and R waits at most
until the backlog queued ahead of it at time ``d`` has been dispatched. With a
queue bound of ``Q`` requests and a dispatch rate of at least ``μ`` requests
per second while the queue is non-empty::

    wait(R) <= α·s + Q / μ

:func:`aged_wait_bound_s` computes this bound from the configuration.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class PolicyName(StrEnum):
    FCFS = "fcfs"
    SJF = "sjf"
    SJF_AGED = "sjf-aged"


class PointEstimate(StrEnum):
    """Which number of the length prediction ranks a request."""

    MEAN = "mean"
    P50 = "p50"
    P90 = "p90"


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """What the policy knows about a waiting request.

    ``predicted_tokens`` is the chosen point estimate (already capped by the
    request's ``max_tokens``); the simulator's oracle passes the true length.
    """

    request_id: str
    arrival_time: float
    predicted_tokens: float
    prompt_tokens: int = 0


SortKey = tuple[float, float, str]


class OrderingPolicy(Protocol):
    """Maps a request to a static sort key; smaller keys are served first."""

    name: str

    def key(self, request: QueuedRequest) -> SortKey: ...


@dataclass(frozen=True, slots=True)
class FCFSPolicy:
    name: str = PolicyName.FCFS.value

    def key(self, request: QueuedRequest) -> SortKey:
        return (request.arrival_time, request.arrival_time, request.request_id)


@dataclass(frozen=True, slots=True)
class SJFPolicy:
    """Shortest predicted job first, no aging: can starve long requests."""

    name: str = PolicyName.SJF.value

    def key(self, request: QueuedRequest) -> SortKey:
        return (_size(request), request.arrival_time, request.request_id)


@dataclass(frozen=True, slots=True)
class AgedSJFPolicy:
    """SJF with a size-relative virtual deadline; see the module docstring."""

    aging_s_per_token: float
    name: str = PolicyName.SJF_AGED.value

    def __post_init__(self) -> None:
        if not (self.aging_s_per_token > 0 and math.isfinite(self.aging_s_per_token)):
            raise ValueError("aging_s_per_token must be a positive finite number")

    def key(self, request: QueuedRequest) -> SortKey:
        deadline = request.arrival_time + self.aging_s_per_token * _size(request)
        return (deadline, request.arrival_time, request.request_id)


def _size(request: QueuedRequest) -> float:
    # A prediction below one token (or NaN from a broken model) must not let a
    # request jump the whole queue; clamp to one token.
    p = request.predicted_tokens
    return max(p, 1.0)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How requests are ordered. Shared by the gateway's config and the simulator's CLI."""

    name: PolicyName = PolicyName.SJF_AGED
    #: which number of the length prediction ranks a request
    point_estimate: PointEstimate = PointEstimate.MEAN
    #: seconds of queueing a request may accrue per predicted token before it
    #: outranks every later arrival (``sjf-aged`` only)
    aging_s_per_token: float = 0.05


def make_policy(config: PolicyConfig) -> OrderingPolicy:
    if config.name == PolicyName.FCFS:
        return FCFSPolicy()
    if config.name == PolicyName.SJF:
        return SJFPolicy()
    if config.name == PolicyName.SJF_AGED:
        return AgedSJFPolicy(config.aging_s_per_token)
    raise ValueError(f"unknown policy {config.name!r}")


def aged_wait_bound_s(
    aging_s_per_token: float,
    predicted_tokens: float,
    queue_capacity: int,
    min_dispatch_rate_per_s: float,
) -> float:
    """Worst-case queue wait of a request under ``sjf-aged`` (module docstring)."""
    if min_dispatch_rate_per_s <= 0:
        raise ValueError("min_dispatch_rate_per_s must be positive")
    return aging_s_per_token * max(predicted_tokens, 1.0) + queue_capacity / min_dispatch_rate_per_s


def engine_priority(key: SortKey, epoch: float) -> int:
    """The rank as vLLM's integer ``priority`` (lower runs first).

    vLLM orders its waiting queue by ``(priority, arrival_time)``; passing the
    first element of our key in milliseconds since ``epoch`` keeps the same
    order inside the worker. Clamped to be non-negative.
    """
    return max(0, round((key[0] - epoch) * 1000.0))


class QueueFull(Exception):
    """Raised by :meth:`PolicyQueue.push` when the queue is at capacity."""


@dataclass(order=True, slots=True)
class _Entry:
    key: SortKey
    seq: int
    request: QueuedRequest = field(compare=False)
    removed: bool = field(default=False, compare=False)


class PolicyQueue:
    """A bounded priority queue ordered by a policy's static keys.

    ``remove`` is O(1) (lazy deletion) so a disconnected client can leave the
    queue without a re-heapify.
    """

    def __init__(self, policy: OrderingPolicy, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.policy = policy
        self.capacity = capacity
        self._heap: list[_Entry] = []
        self._live: dict[str, _Entry] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._live

    def push(self, request: QueuedRequest) -> SortKey:
        if request.request_id in self._live:
            raise ValueError(f"request {request.request_id!r} is already queued")
        if self.capacity is not None and len(self._live) >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} requests)")
        entry = _Entry(self.policy.key(request), next(self._seq), request)
        heapq.heappush(self._heap, entry)
        self._live[request.request_id] = entry
        return entry.key

    def peek(self) -> QueuedRequest | None:
        self._drop_removed_head()
        return self._heap[0].request if self._heap else None

    def pop(self) -> QueuedRequest:
        self._drop_removed_head()
        if not self._heap:
            raise IndexError("pop from an empty PolicyQueue")
        entry = heapq.heappop(self._heap)
        del self._live[entry.request.request_id]
        return entry.request

    def remove(self, request_id: str) -> bool:
        entry = self._live.pop(request_id, None)
        if entry is None:
            return False
        entry.removed = True
        return True

    def key_of(self, request_id: str) -> SortKey | None:
        entry = self._live.get(request_id)
        return entry.key if entry else None

    def __iter__(self) -> Iterator[QueuedRequest]:
        """Waiting requests in service order (O(n log n); for inspection only)."""
        return iter(e.request for e in sorted(self._live.values()))

    def _drop_removed_head(self) -> None:
        heap = self._heap
        while heap and heap[0].removed:
            heapq.heappop(heap)


# --- admission control -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Per-worker bound on in-flight work; ``None`` means unlimited.

    With both unlimited every request goes straight to the worker (plain vLLM
    behaviour); any limit makes requests wait in the gateway's queue, where
    the policy's order matters.
    """

    max_sequences: int | None = None
    max_predicted_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """In-flight work on one worker, as the gateway or simulator tracks it."""

    worker_id: str
    healthy: bool
    in_flight_sequences: int
    in_flight_predicted_tokens: float


def can_admit(load: WorkerLoad, request: QueuedRequest, limits: AdmissionLimits) -> bool:
    if not load.healthy:
        return False
    if limits.max_sequences is not None and load.in_flight_sequences >= limits.max_sequences:
        return False
    # An idle worker always takes one request, so a prediction larger than
    # the whole budget cannot wait forever.
    return not (limits.max_predicted_tokens is not None and load.in_flight_sequences > 0
                and load.in_flight_predicted_tokens + _size(request) > limits.max_predicted_tokens)


def pick_worker(
    loads: Iterable[WorkerLoad], request: QueuedRequest, limits: AdmissionLimits
) -> str | None:
    """Route to the admissible worker with the least predicted outstanding work.

    Ties go to fewer sequences, then to the worker id, so routing is
    deterministic. Returns ``None`` when no worker can take the request now.
    """
    best: tuple[float, int, str] | None = None
    for load in loads:
        if not can_admit(load, request, limits):
            continue
        score = (load.in_flight_predicted_tokens, load.in_flight_sequences, load.worker_id)
        if best is None or score < best:
            best = score
    return best[2] if best else None


# --- preemption victims (used by the simulator's engine model) ---------------


class EngineQueueMode(StrEnum):
    """vLLM's ``--scheduling-policy``."""

    FCFS = "fcfs"
    PRIORITY = "priority"


@dataclass(frozen=True, slots=True)
class RunningSeq:
    request_id: str
    priority: int
    arrival_time: float


def choose_preemption_victim(running: Sequence[RunningSeq], mode: EngineQueueMode) -> int:
    """Index of the sequence vLLM V1 preempts when KV blocks run out.

    FCFS preempts the most recently scheduled sequence (the end of the running
    list); the priority policy preempts the largest ``(priority,
    arrival_time)``, as ``vllm/v1/core/sched/scheduler.py`` does.
    """
    if not running:
        raise ValueError("no running sequence to preempt")
    if mode == EngineQueueMode.FCFS:
        return len(running) - 1
    return max(range(len(running)), key=lambda i: (running[i].priority, running[i].arrival_time))
