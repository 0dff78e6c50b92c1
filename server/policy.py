"""The scheduling policy: one module shared by the live gateway and the simulator.

Everything here is pure: no I/O, no clock reads, no framework types. Time is
always a parameter (seconds on whatever clock the caller uses), so the same
code orders requests on the gateway's wall clock and on the simulator's
virtual clock.

Ordering keys
-------------
Every policy maps a request to a *static* sort key, fixed when the request is
enqueued; smaller keys are served first. A key starts with the client's
``priority`` band (vLLM's field: lower runs first, default 0), so bands are
strictly ordered and the length key orders requests inside a band. Keys end in
``(arrival_time, request_id)`` so the order is total and deterministic.

A request's *size* is its predicted service in output-token equivalents:
``predicted output tokens + prompt_token_weight * prompt tokens`` (see
:class:`PolicyConfig`), so a long prompt counts for the prefill it costs. A
prediction that is not a finite number (a broken model) never ranks a request
ahead of others: it counts as :data:`UNKNOWN_SIZE_TOKENS`.

* ``fcfs``: ``arrival_time``.
* ``sjf``: the size, no aging. Long requests can starve under a steady stream
  of short ones; kept for research comparisons.
* ``sjf-aged`` (the gateway default): a virtual deadline
  ``arrival_time + aging_s_per_token * size``. A request is
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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


#: The size of a request whose prediction is not a finite number: about the longest
#: answers the CASTILLO models give, so a broken prediction waits rather than jumps.
UNKNOWN_SIZE_TOKENS = 4096.0


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """What the policy knows about a waiting request.

    ``predicted_tokens`` is the chosen point estimate of the output (already capped by
    the request's ``max_tokens``, and times ``n``); the simulator's oracle passes the
    true length. ``kv_tokens`` is the predicted KV footprint (prompt + p90 output) that
    admission counts against a worker's cache; 0 when unknown.
    """

    request_id: str
    arrival_time: float
    predicted_tokens: float
    prompt_tokens: int = 0
    #: the client's priority band (vLLM semantics: lower runs first)
    priority: int = 0
    #: the requested model; ``None`` matches any worker
    model: str | None = None
    kv_tokens: float = 0.0


SortKey = tuple[int, float, float, str]


class OrderingPolicy(Protocol):
    """Maps a request to a static sort key; smaller keys are served first."""

    name: str

    def key(self, request: QueuedRequest) -> SortKey: ...


@dataclass(frozen=True, slots=True)
class FCFSPolicy:
    name: str = PolicyName.FCFS.value

    def key(self, request: QueuedRequest) -> SortKey:
        return (request.priority, request.arrival_time, request.arrival_time,
                request.request_id)


@dataclass(frozen=True, slots=True)
class SJFPolicy:
    """Shortest predicted job first, no aging: can starve long requests."""

    prompt_token_weight: float = 0.0
    name: str = PolicyName.SJF.value

    def key(self, request: QueuedRequest) -> SortKey:
        return (request.priority, service_size(request, self.prompt_token_weight),
                request.arrival_time, request.request_id)


@dataclass(frozen=True, slots=True)
class AgedSJFPolicy:
    """SJF with a size-relative virtual deadline; see the module docstring."""

    aging_s_per_token: float
    prompt_token_weight: float = 0.0
    name: str = PolicyName.SJF_AGED.value

    def __post_init__(self) -> None:
        if not (self.aging_s_per_token > 0 and math.isfinite(self.aging_s_per_token)):
            raise ValueError("aging_s_per_token must be a positive finite number")

    def key(self, request: QueuedRequest) -> SortKey:
        size = service_size(request, self.prompt_token_weight)
        deadline = request.arrival_time + self.aging_s_per_token * size
        return (request.priority, deadline, request.arrival_time, request.request_id)


def predicted_size(tokens: float) -> float:
    """A prediction as a rankable size: at least one token; not finite -> unknown."""
    if not math.isfinite(tokens):
        return UNKNOWN_SIZE_TOKENS
    return max(tokens, 1.0)


def service_size(request: QueuedRequest, prompt_token_weight: float) -> float:
    """Predicted service in output-token equivalents (see the module docstring)."""
    return predicted_size(request.predicted_tokens) + prompt_token_weight * max(
        0, request.prompt_tokens)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How requests are ordered. Shared by the gateway's config and the simulator's CLI."""

    name: PolicyName = PolicyName.SJF_AGED
    #: which number of the length prediction ranks a request
    point_estimate: PointEstimate = PointEstimate.MEAN
    #: seconds of queueing a request may accrue per predicted token before it
    #: outranks every later arrival (``sjf-aged`` only). 0.005 keeps throughput within
    #: 2% of plain vLLM in 95 of the regime map's 96 cells and p99 at parity; 0.05
    #: gained more on the mean but lost up to 8% throughput in finite overloads, long
    #: requests left to drain in a small batch (docs/results/regimes.md). In a burst the
    #: aging does not matter: every request has the same arrival.
    aging_s_per_token: float = 0.005
    #: what one prompt token costs relative to one output token, in time a request
    #: holds the engine: (prefill seconds per prompt token) / (seconds per decode
    #: step). The default is the calibrated CPU worker's (0.00073 s per prefilled
    #: token, ~0.16 s per step at 32 sequences; the RTX PRO 6000 fit gives 0.0017 at
    #: 128 sequences); :func:`prompt_token_weight_of` derives it from any linear
    #: step model.
    prompt_token_weight: float = 0.0045


def make_policy(config: PolicyConfig) -> OrderingPolicy:
    if config.name == PolicyName.FCFS:
        return FCFSPolicy()
    if config.name == PolicyName.SJF:
        return SJFPolicy(config.prompt_token_weight)
    if config.name == PolicyName.SJF_AGED:
        return AgedSJFPolicy(config.aging_s_per_token, config.prompt_token_weight)
    raise ValueError(f"unknown policy {config.name!r}")


def prompt_token_weight_of(coefficients: Mapping[str, float], batch_sequences: int,
                           mean_context_tokens: float = 512.0) -> float:
    """The prompt-token weight of a linear step model (``simulator.latency.LinearStepModel``
    coefficients: ``intercept``, ``tokens``, ``seqs``, ``decode_kv``) at a typical batch:
    the marginal prefill cost of one token over the time of one decode step."""
    if batch_sequences < 1:
        raise ValueError("batch_sequences must be at least 1")
    step = (coefficients["intercept"]
            + batch_sequences * (coefficients["tokens"] + coefficients["seqs"])
            + batch_sequences * mean_context_tokens * coefficients.get("decode_kv", 0.0))
    return coefficients["tokens"] / step


def aged_wait_bound_s(
    aging_s_per_token: float,
    predicted_tokens: float,
    queue_capacity: int,
    min_dispatch_rate_per_s: float,
) -> float:
    """Worst-case queue wait of a request under ``sjf-aged`` (module docstring)."""
    if min_dispatch_rate_per_s <= 0:
        raise ValueError("min_dispatch_rate_per_s must be positive")
    return aging_s_per_token * predicted_size(predicted_tokens) + (
        queue_capacity / min_dispatch_rate_per_s)


#: Room for one band's length keys inside vLLM's integer priority: 10^12 ms is 31 years
#: of time-based keys (or 10^9 s of size keys at millisecond resolution).
ENGINE_PRIORITY_BAND = 10**12
#: The gateway's time-based keys reach vLLM as wall-clock milliseconds since this
#: moment (2025-01-01T00:00:00Z), one scale for every replica.
PRIORITY_EPOCH_UNIX = 1_735_689_600.0


def engine_priority(key: SortKey, epoch: float) -> int:
    """The rank as vLLM's integer ``priority`` (lower runs first).

    vLLM orders its waiting queue by ``(priority, arrival_time)`` and preempts the
    largest. The client's band comes first, then the policy's length key in
    milliseconds since ``epoch`` (clamped into the band), so the worker keeps the
    gateway's order and preempts the request the gateway would serve last.
    """
    band, primary = key[0], key[1]
    within = min(ENGINE_PRIORITY_BAND - 1, max(0, round((primary - epoch) * 1000.0)))
    return band * ENGINE_PRIORITY_BAND + within


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

    def update(self, request: QueuedRequest) -> SortKey:
        """Re-rank a waiting request (a better prediction arrived); returns its new key."""
        if request.request_id not in self._live:
            raise KeyError(request.request_id)
        self.remove(request.request_id)
        return self.push(request)

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
    """How much work the gateway lets into each worker; the rest waits in its queue.

    By default admission *follows the engine*: a worker takes requests up to its own
    running slots (vLLM's ``max_num_seqs``, as the engine reports or the gateway learns
    it) plus ``engine_queue`` more that wait inside vLLM's own priority queue (so a slot
    that frees is refilled within the engine's step, without a round trip), and, with a
    ``kv_budget``, while the predicted KV footprint in flight (prompt + p90 output per
    request) stays within that share of the engine's KV capacity. Nothing is held back while the engine
    has room, so the gateway never runs the engine below the batch it would run by
    itself; when it is full, the excess waits in the gateway's queue in policy order.
    An engine that has reported nothing yet is not limited.

    ``max_sequences`` and ``max_predicted_tokens`` are hand-set caps on top (``None``:
    none), for research comparisons or an engine whose reports cannot be read.
    """

    max_sequences: int | None = None
    max_predicted_tokens: float | None = None
    follow_engine: bool = True
    engine_queue: int = 2
    #: fraction of the engine's KV capacity the in-flight predicted footprint may fill
    #: (above 1: overcommit, as requests free their blocks at different times);
    #: ``None`` ignores KV. Off by default: the footprint counts each request's final size
    #: (prompt + p90 output) for its whole life, about twice what it holds on average, so
    #: any budget up to 4 ran a 24 GB card's engine below its batch (up to 40 % less
    #: throughput, 3x the mean E2E at 1.0) while ordering alone gained; see
    #: docs/results/regimes.md
    kv_budget: float | None = None

    @classmethod
    def fixed(cls, max_sequences: int | None = None,
              max_predicted_tokens: float | None = None) -> AdmissionLimits:
        """Hand-set caps only, nothing learned from the engine (with neither cap, every
        request goes straight to the worker, as plain vLLM)."""
        return cls(max_sequences, max_predicted_tokens, follow_engine=False, kv_budget=None)

    def __post_init__(self) -> None:
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError("max_sequences must be at least 1")
        if self.engine_queue < 0:
            raise ValueError("engine_queue must be non-negative")
        if self.kv_budget is not None and not (self.kv_budget > 0
                                               and math.isfinite(self.kv_budget)):
            raise ValueError("kv_budget must be a positive finite number")


#: No limit at all: every request goes straight to the worker, as plain vLLM.
UNLIMITED = AdmissionLimits.fixed()


@dataclass(frozen=True, slots=True)
class EngineView:
    """What a worker's engine has told the gateway about its capacity (``None``: unknown)."""

    #: sequences the engine runs at once (vLLM ``max_num_seqs``)
    max_running: int | None = None
    #: KV cache capacity in tokens (vLLM ``num_gpu_blocks x block_size``)
    kv_capacity_tokens: float | None = None
    #: a smaller running count seen once while requests waited: if the next report
    #: shows it again, the engine now runs fewer (``server.engine_stats``)
    fewer_running_seen: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """In-flight work on one worker, as the gateway or simulator tracks it."""

    worker_id: str
    healthy: bool
    in_flight_sequences: int
    in_flight_predicted_tokens: float
    in_flight_kv_tokens: float = 0.0
    #: models the worker serves; ``None``: not known, any model
    models: frozenset[str] | None = None
    engine: EngineView = field(default_factory=EngineView)

    def serves(self, model: str | None) -> bool:
        return model is None or self.models is None or model in self.models

    def plus(self, request: QueuedRequest) -> WorkerLoad:
        """This load with ``request`` in flight too."""
        return replace(self, in_flight_sequences=self.in_flight_sequences + 1,
                       in_flight_predicted_tokens=self.in_flight_predicted_tokens
                       + predicted_size(request.predicted_tokens),
                       in_flight_kv_tokens=self.in_flight_kv_tokens + request.kv_tokens)

    def minus(self, request: QueuedRequest) -> WorkerLoad:
        """This load without ``request``; an idle worker has exactly no work (float drift)."""
        if self.in_flight_sequences <= 1:
            return replace(self, in_flight_sequences=0, in_flight_predicted_tokens=0.0,
                           in_flight_kv_tokens=0.0)
        return replace(self, in_flight_sequences=self.in_flight_sequences - 1,
                       in_flight_predicted_tokens=max(0.0, self.in_flight_predicted_tokens
                                                      - predicted_size(request.predicted_tokens)),
                       in_flight_kv_tokens=max(0.0, self.in_flight_kv_tokens
                                               - request.kv_tokens))


def eligible(load: WorkerLoad, request: QueuedRequest) -> bool:
    """The worker could serve the request at all: healthy and serving its model."""
    return load.healthy and load.serves(request.model)


def can_admit(load: WorkerLoad, request: QueuedRequest, limits: AdmissionLimits) -> bool:
    if not eligible(load, request):
        return False
    n = load.in_flight_sequences
    if limits.max_sequences is not None and n >= limits.max_sequences:
        return False
    engine = load.engine
    if (limits.follow_engine and engine.max_running is not None
            and n >= engine.max_running + limits.engine_queue):
        return False
    if n == 0:
        # An idle worker always takes one request, so a prediction larger than a whole
        # budget cannot wait forever.
        return True
    if (limits.max_predicted_tokens is not None and load.in_flight_predicted_tokens
            + predicted_size(request.predicted_tokens) > limits.max_predicted_tokens):
        return False
    return not (limits.kv_budget is not None and engine.kv_capacity_tokens is not None
                and load.in_flight_kv_tokens + request.kv_tokens
                > limits.kv_budget * engine.kv_capacity_tokens)


def has_free_slot(load: WorkerLoad, request: QueuedRequest, limits: AdmissionLimits) -> bool:
    """The request would start running at once on this worker, whatever its size: it is
    admissible and the engine has a running slot free (not merely room in its queue).
    Only then does its length prediction decide nothing, so it may follow the request."""
    if not can_admit(load, request, limits):
        return False
    if limits.max_predicted_tokens is not None or (
            limits.kv_budget is not None and load.engine.kv_capacity_tokens is not None):
        return load.in_flight_sequences == 0
    slots = [s for s in (limits.max_sequences, load.engine.max_running) if s is not None]
    return bool(slots) and load.in_flight_sequences < min(slots)


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


def plan_dispatch(
    queue: PolicyQueue,
    loads: Mapping[str, WorkerLoad],
    limits: AdmissionLimits,
    excluded: Callable[[QueuedRequest], frozenset[str]] = lambda _request: frozenset(),
) -> list[tuple[QueuedRequest, str]]:
    """Pop, in policy order, every queued request that can be placed now, with its worker.

    A request that cannot be placed holds the workers it could use: no request behind it
    is placed there (strict order, so nothing overtakes it where it waits). Requests
    behind it may still go to workers it cannot use (another model's, or one its retry
    excludes), so one request never blocks the whole queue. ``loads`` is not changed;
    the caller accounts for each placement."""
    loads = dict(loads)
    held: set[str] = set()
    placed: list[tuple[QueuedRequest, str]] = []
    passed_over: list[QueuedRequest] = []
    while len(queue) and len(held) < len(loads):
        request = queue.pop()
        out = excluded(request)
        usable = [load for wid, load in loads.items()
                  if wid not in out and wid not in held and eligible(load, request)]
        worker = pick_worker(usable, request, limits)
        if worker is None:
            held.update(load.worker_id for load in usable)
            passed_over.append(request)
            continue
        placed.append((request, worker))
        loads[worker] = loads[worker].plus(request)
    for request in passed_over:
        queue.push(request)
    return placed


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
