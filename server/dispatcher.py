"""Admission and dispatch: enqueue in the policy queue, hand out worker leases in policy order.

A request calls :meth:`Dispatcher.acquire`; it waits in the ``PolicyQueue``
until the head of the queue is admissible on some worker (``AdmissionLimits``)
and gets a :class:`Lease` for the worker with the least predicted outstanding
work (``policy.pick_worker``). Releasing a lease, or any change in worker
health, dispatches again. The order and routing decisions live in
``server.policy``; this module only turns them into asyncio futures.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.backends import WorkerPool
from server.policy import (
    AdmissionLimits,
    OrderingPolicy,
    PolicyName,
    PolicyQueue,
    QueuedRequest,
    QueueFull,
    SortKey,
    engine_priority,
    pick_worker,
)


class NoHealthyWorker(Exception):
    """No worker (outside the ones already tried) is in rotation."""


class QueueTimeout(Exception):
    """The request waited in the queue longer than ``queue_timeout_s``."""


class Draining(Exception):
    """The gateway is shutting down and accepts no new requests."""


@dataclass(slots=True)
class Lease:
    worker_url: str
    request: QueuedRequest
    #: the rank passed to vLLM as ``priority``
    engine_priority: int
    queue_wait_s: float
    #: what this request adds to the worker's predicted outstanding work; starts as the
    #: request's prediction and changes only through :meth:`Dispatcher.reprice`
    predicted_tokens: float = 0.0


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[Lease]
    exclude: frozenset[str]
    enqueued_at: float


class Dispatcher:
    def __init__(
        self,
        policy: OrderingPolicy,
        pool: WorkerPool,
        limits: AdmissionLimits,
        *,
        queue_capacity: int,
        queue_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.pool = pool
        self.limits = limits
        self.queue = PolicyQueue(policy, queue_capacity)
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        # Time-based keys (fcfs, sjf-aged) become vLLM priorities as milliseconds
        # since start; plain sjf's key is a token count and needs no offset.
        self._priority_epoch = 0.0 if policy.name == PolicyName.SJF else clock()
        self._waiters: dict[str, _Waiter] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        # Smoothed seconds per request per slot, for Retry-After estimates.
        self._service_time_ewma_s = 1.0
        pool.on_change = self.pump

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def queue_depth(self) -> int:
        return len(self.queue)

    async def acquire(
        self, request: QueuedRequest, exclude: frozenset[str] = frozenset()
    ) -> Lease:
        """Wait for a worker slot in policy order. Raises ``QueueFull``, ``NoHealthyWorker``,
        ``QueueTimeout`` or ``Draining``; cancelling the caller leaves the queue cleanly."""
        if self.draining:
            raise Draining()
        if not (self.pool.healthy_ids() - exclude):
            raise NoHealthyWorker()
        self.queue.push(request)  # raises QueueFull
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[request.request_id] = _Waiter(future, exclude, self.clock())
        self.pump()
        try:
            # Not ``asyncio.wait_for``: on Python 3.11 it returns the result and swallows a
            # cancellation that arrives in the instant the lease is granted, so a gone
            # client's request would still run, to the end, for nobody.
            async with asyncio.timeout(self.queue_timeout_s):
                return await future
        except BaseException as exc:
            # Cancelled (client gone) or timed out: leave the queue, or give back a
            # lease that was granted in the same instant.
            self.queue.remove(request.request_id)
            self._waiters.pop(request.request_id, None)
            if future.done() and not future.cancelled():
                self.release(future.result(), 0.0)
            else:
                future.cancel()
            if isinstance(exc, TimeoutError):
                raise QueueTimeout() from None
            raise

    def release(self, lease: Lease, service_time_s: float | None = None) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        if service_time_s:
            self._service_time_ewma_s += 0.1 * (service_time_s - self._service_time_ewma_s)
        self.pool.release(lease.worker_url, lease.predicted_tokens)  # pumps

    def pump(self) -> None:
        """Dispatch queued requests while the head of the queue fits on a worker."""
        while True:
            head = self.queue.peek()
            if head is None:
                return
            waiter = self._waiters.get(head.request_id)
            if waiter is None or waiter.future.done():
                self.queue.remove(head.request_id)
                continue
            loads = self.pool.loads()
            if waiter.exclude:
                loads = [load for load in loads if load.worker_id not in waiter.exclude]
            worker = pick_worker(loads, head, self.limits)
            if worker is None:
                # Strict policy order: the head waits, and so does everyone behind it.
                return
            key = self.queue.key_of(head.request_id)
            self.queue.pop()
            del self._waiters[head.request_id]
            assert key is not None
            waiter.future.set_result(self._grant(worker, head, key, waiter.enqueued_at))

    def _grant(self, worker: str, request: QueuedRequest, key: SortKey, since: float) -> Lease:
        self.pool.reserve(worker, request.predicted_tokens)
        self._in_flight += 1
        self._idle.clear()
        priority = engine_priority(key, self._priority_epoch)
        return Lease(worker, request, priority, self.clock() - since, request.predicted_tokens)

    def try_acquire_now(self, request: QueuedRequest) -> Lease | None:
        """A lease at once, without queueing, if the request would be dispatched now whatever
        its size: nothing is queued, admission does not count predicted tokens, and a worker
        has a free slot. Else ``None`` (then use ``acquire``). Its prediction then decides
        nothing (there is no order to choose), so the caller may dispatch first and predict
        while the worker starts (see ``reprice``).

        The slot is taken in the same step as the check: a burst's arrivals are all
        handled before any of them would reach ``acquire``, and each must see the slots
        the earlier ones took, or all of them would skip the queue's order."""
        if self.draining or len(self.queue) or self.limits.max_predicted_tokens is not None:
            return None
        worker = pick_worker(self.pool.loads(), request, self.limits)
        if worker is None:
            return None
        return self._grant(worker, request, self.policy.key(request), self.clock())

    def reprice(self, lease: Lease, predicted_tokens: float) -> None:
        """Replace a lease's provisional size by the real prediction in the worker's load."""
        self.pool.adjust(lease.worker_url, predicted_tokens - lease.predicted_tokens)
        lease.predicted_tokens = predicted_tokens

    def retry_after_s(self) -> int:
        """A rough wait until a queued slot frees: backlog per slot times service time."""
        slots = self.limits.max_sequences or 16
        healthy = max(1, len(self.pool.healthy_ids()))
        backlog = len(self.queue) / (slots * healthy)
        return max(1, min(120, math.ceil(backlog * self._service_time_ewma_s)))

    async def drain(self, grace_s: float) -> bool:
        """Stop admitting; wait up to ``grace_s`` for in-flight requests. True when all done."""
        self.draining = True
        if self._in_flight == 0 and not self._waiters:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True


__all__ = ["Dispatcher", "Draining", "Lease", "NoHealthyWorker", "QueueFull", "QueueTimeout"]
