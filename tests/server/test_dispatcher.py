"""The dispatcher's lease accounting: cancelled waiters (client gone) and idle-slot leases."""

from __future__ import annotations

import asyncio

from server.backends import Worker, WorkerPool
from server.dispatcher import Dispatcher
from server.policy import AdmissionLimits, FCFSPolicy, QueuedRequest

URL = "http://worker"


def _dispatcher(max_sequences: int = 1) -> tuple[Dispatcher, WorkerPool]:
    pool = WorkerPool()
    pool.workers[URL] = Worker(URL, healthy=True, models=frozenset({"m"}))
    dispatcher = Dispatcher(FCFSPolicy(), pool, AdmissionLimits(max_sequences=max_sequences),
                            queue_capacity=8, queue_timeout_s=30.0)
    return dispatcher, pool


async def test_cancel_in_the_instant_a_lease_is_granted_gives_the_lease_back():
    # The first request holds the only slot; the second waits. Releasing the first grants
    # the second its lease, and the second's caller is cancelled before it can run: the
    # cancellation must win (the caller is gone) and the lease must come back, or the slot
    # stays taken while the request runs for nobody.
    dispatcher, pool = _dispatcher()
    first = await dispatcher.acquire(QueuedRequest("a", 0.0, 10.0))
    waiting = asyncio.ensure_future(dispatcher.acquire(QueuedRequest("b", 1.0, 10.0)))
    await asyncio.sleep(0)
    assert dispatcher.queue_depth() == 1
    dispatcher.release(first)  # grants "b" its lease now
    waiting.cancel()  # ... and "b"'s client leaves in the same instant
    results = await asyncio.gather(waiting, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError), results
    assert dispatcher.in_flight == 0
    assert pool.workers[URL].in_flight_sequences == 0
    assert dispatcher.queue_depth() == 0


async def test_cancel_while_queued_leaves_the_queue_and_the_next_request_runs():
    dispatcher, pool = _dispatcher()
    first = await dispatcher.acquire(QueuedRequest("a", 0.0, 10.0))
    leaving = asyncio.ensure_future(dispatcher.acquire(QueuedRequest("b", 1.0, 10.0)))
    staying = asyncio.ensure_future(dispatcher.acquire(QueuedRequest("c", 2.0, 10.0)))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert dispatcher.queue_depth() == 1
    dispatcher.release(first)
    lease = await asyncio.wait_for(staying, 1.0)
    assert lease.request.request_id == "c"
    assert pool.workers[URL].in_flight_sequences == 1


async def test_an_idle_slot_is_taken_at_once_and_only_while_it_is_free():
    dispatcher, pool = _dispatcher(max_sequences=2)
    first = dispatcher.try_acquire_now(QueuedRequest("a", 0.0, 10.0))
    second = dispatcher.try_acquire_now(QueuedRequest("b", 0.0, 10.0))
    assert first is not None and second is not None
    assert pool.workers[URL].in_flight_sequences == 2 and dispatcher.in_flight == 2
    # both slots are taken the moment they are granted: a third arrival must queue
    assert dispatcher.try_acquire_now(QueuedRequest("c", 0.0, 10.0)) is None
    waiting = asyncio.ensure_future(dispatcher.acquire(QueuedRequest("c", 0.0, 10.0)))
    await asyncio.sleep(0)
    dispatcher.release(first)  # the queued request gets the freed slot, not a newcomer
    assert (await asyncio.wait_for(waiting, 1.0)).request.request_id == "c"
    dispatcher.release(second)
    # a free slot with nobody queued: taken at once again
    assert dispatcher.try_acquire_now(QueuedRequest("d", 0.0, 10.0)) is not None


async def test_an_idle_slot_is_not_taken_past_a_queued_request():
    dispatcher, _ = _dispatcher(max_sequences=1)
    first = await dispatcher.acquire(QueuedRequest("a", 0.0, 10.0))
    waiting = asyncio.ensure_future(dispatcher.acquire(QueuedRequest("b", 1.0, 10.0)))
    await asyncio.sleep(0)
    assert dispatcher.try_acquire_now(QueuedRequest("c", 2.0, 1.0)) is None
    dispatcher.release(first)
    await asyncio.wait_for(waiting, 1.0)


async def test_replicas_started_at_different_times_give_one_priority_scale():
    """Two gateways with unrelated monotonic clocks: a request arriving at the same wall
    time gets the same vLLM priority from either, and a later one a larger one."""
    from server.policy import AgedSJFPolicy

    wall = {"now": 1_800_000_000.0}

    def replica(monotonic_at_start: float):
        pool = WorkerPool()
        pool.workers[URL] = Worker(URL, healthy=True, models=frozenset({"m"}))
        offset = monotonic_at_start - wall["now"]
        return Dispatcher(AgedSJFPolicy(aging_s_per_token=0.01), pool, AdmissionLimits(),
                          queue_capacity=8, queue_timeout_s=30.0,
                          clock=lambda: wall["now"] + offset, wall_clock=lambda: wall["now"])

    old, new = replica(50.0), replica(90_000.0)
    wall["now"] += 5.0  # both have been up for a while; the clocks run on together
    a = await old.acquire(QueuedRequest("a", old.clock(), 100.0))
    b = await new.acquire(QueuedRequest("b", new.clock(), 100.0))
    c = await new.acquire(QueuedRequest("c", new.clock() + 2.0, 100.0))
    assert a.engine_priority == b.engine_priority < c.engine_priority
