"""Admission and dispatch: enqueue in the policy queue, hand out worker leases in policy order.

A request calls :meth:`Dispatcher.acquire`; it waits in the ``PolicyQueue``
until it is admissible on some worker (``AdmissionLimits``) and gets a
:class:`Lease` for the worker with the least predicted outstanding work. Which
requests go, in which order and where, is ``server.policy.plan_dispatch``'s
decision; releasing a lease, a change in worker health or a new engine report
dispatches again. This module only turns those decisions into asyncio futures.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.backends import WorkerPool
from server.policy import (
    PRIORITY_EPOCH_UNIX,
    AdmissionLimits,
    OrderingPolicy,
    PolicyName,
    PolicyQueue,
    QueuedRequest,
    QueueFull,
    SortKey,
    engine_priority,
    has_free_slot,
    plan_dispatch,
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
    #: the request as the worker's load counts it; changes only through
    #: :meth:`Dispatcher.resize`
    request: QueuedRequest
    #: the rank passed to vLLM as ``priority``
    engine_priority: int
    queue_wait_s: float


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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.pool = pool
        self.limits = limits
        self.queue = PolicyQueue(policy, queue_capacity)
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        # Time-based keys (fcfs, sjf-aged) become vLLM priorities as milliseconds
        # since start; plain sjf's key is a token count and needs no offset.
        # Time-based keys (fcfs, sjf-aged) become vLLM priorities as wall-clock milliseconds
        # since PRIORITY_EPOCH_UNIX, so replicas started at different times (each with its
        # own monotonic clock) rank their requests on one scale inside a shared worker;
        # plain sjf's key is a token count and needs no offset.
        self._priority_epoch = (0.0 if policy.name == PolicyName.SJF
                                else clock() - (wall_clock() - PRIORITY_EPOCH_UNIX))
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
        self.pool.release(lease.worker_url, lease.request)  # pumps

    def pump(self) -> None:
        """Dispatch every queued request the policy places now (``plan_dispatch``)."""
        waiters = self._waiters
        while len(self.queue):
            placed = plan_dispatch(self.queue, self.pool.load_map(), self.limits,
                                   self._excluded)
            if not placed:
                return
            stale = False
            for request, worker in placed:
                waiter = waiters.pop(request.request_id, None)
                if waiter is None or waiter.future.done():
                    stale = True  # its client left; the plan counted it, so plan again
                    continue
                key = self.policy.key(request)
                waiter.future.set_result(self._grant(worker, request, key, waiter.enqueued_at))
            if not stale:
                return

    def _excluded(self, request: QueuedRequest) -> frozenset[str]:
        waiter = self._waiters.get(request.request_id)
        return waiter.exclude if waiter is not None else frozenset()

    def _grant(self, worker: str, request: QueuedRequest, key: SortKey, since: float) -> Lease:
        self.pool.reserve(worker, request)
        self._in_flight += 1
        self._idle.clear()
        priority = engine_priority(key, self._priority_epoch)
        return Lease(worker, request, priority, self.clock() - since)

    def try_acquire_now(self, request: QueuedRequest) -> Lease | None:
        """A lease at once, without queueing, if the request would start running now
        whatever its size: nothing is queued and a worker's engine has a running slot
        free (``policy.has_free_slot``). Else ``None`` (then use ``acquire``). Its
        prediction then decides nothing, so the caller may dispatch first and predict
        while the worker starts (see ``resize``). A request that would wait in the
        engine's own queue needs its real prediction in its ``priority``, so it never
        takes this path.

        The slot is taken in the same step as the check: a burst's arrivals are all
        handled before any of them would reach ``acquire``, and each must see the slots
        the earlier ones took, or all of them would skip the queue's order."""
        if self.draining or len(self.queue):
            return None
        free = [load for load in self.pool.loads() if has_free_slot(load, request, self.limits)]
        if not free:
            return None
        worker = min(free, key=lambda ld: (ld.in_flight_predicted_tokens,
                                           ld.in_flight_sequences, ld.worker_id)).worker_id
        return self._grant(worker, request, self.policy.key(request), self.clock())

    def resize(self, lease: Lease, request: QueuedRequest) -> None:
        """Replace a lease's provisional sizes by the real prediction in the worker's load."""
        self.pool.swap(lease.worker_url, lease.request, request)
        lease.request = request

    def reprioritize(self, request: QueuedRequest) -> bool:
        """Re-rank a request that still waits in the queue (a better prediction arrived).
        False when it has left the queue already."""
        if request.request_id not in self.queue:
            return False
        self.queue.update(request)
        self.pump()
        return True

    def retry_after_s(self) -> int:
        """A rough wait until a queued request is dispatched: backlog per slot times the
        smoothed service time of one request."""
        slots = 0
        for load in self.pool.loads():
            if load.healthy:
                known = [s for s in (self.limits.max_sequences, load.engine.max_running)
                         if s is not None]
                slots += min(known) if known else 1
        backlog = len(self.queue) / max(1, slots)
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
