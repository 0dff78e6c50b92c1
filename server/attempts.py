"""Dispatch and retries: wait for a worker lease in policy order, then try the worker.

An attempt that fails before any byte reached the client (connection refused, 5xx,
time-out, a stream cut before its first event) is retried on another worker, up to
``max_attempts`` and within ``request_timeout_s``. Queue outcomes become OpenAI-format
errors here: 429 for a full queue, 503 for no worker, a queue time-out or a drain.

Time bounds: an answer may take whatever remains of ``request_timeout_s``. A worker
that does not answer is not found by a first-byte bound: vLLM sends a non-streaming
answer only once it is complete, and a stream's first event only once the request
leaves the engine's waiting queue, where a busy engine may rightly keep it for minutes.
A hung worker is found by the stall probe instead (``server.backends``: after
``first_byte_timeout_s`` without any answer from the worker, it must generate one
token), which fails the open attempts so they are retried elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from server.backends import WorkerPool
from server.config import GatewayConfig
from server.dispatcher import Dispatcher, Draining, Lease, NoHealthyWorker, QueueTimeout
from server.errors import GatewayError
from server.metrics import GatewayMetrics
from server.policy import QueueFull
from server.proxy import (
    OpenStream,
    SSEInspector,
    UpstreamFailure,
    UpstreamReply,
    open_stream,
    post_complete,
)
from server.ticket import Ticket

log = logging.getLogger(__name__)

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def no_worker_error() -> GatewayError:
    return GatewayError(503, "No healthy worker is available.", code="no_healthy_worker",
                        headers={"Retry-After": "2"})


def draining_error() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down.", code="draining",
                        headers={"Retry-After": "1"})


class Attempts:
    def __init__(self, cfg: GatewayConfig, dispatcher: Dispatcher, pool: WorkerPool,
                 client: httpx.AsyncClient, session: aiohttp.ClientSession,
                 metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.pool = pool
        self.client = client  # streams
        self.session = session  # non-streaming answers (see ``proxy.upstream_session``)
        self.metrics = metrics
        self.clock = clock
        self.policy_name = dispatcher.policy.name

    async def run(self, ticket: Ticket, body: dict[str, Any], strip_usage: bool,
                  on_sent: Callable[[], None] | None,
                  handed_over: list[Lease]) -> tuple[Lease, UpstreamReply | OpenStream]:
        """Lease, send, retry: the lease and what the worker answered. ``handed_over``
        holds a lease taken before (the idle path); it is used for the first attempt."""
        tried: set[str] = set()
        deadline = ticket.arrival + self.cfg.request_timeout_s
        path = PATHS[ticket.endpoint]
        # The gateway's id reaches the worker (vLLM uses X-Request-Id as its request id),
        # so the gateway's request log and the worker's logs can be joined.
        headers = {"x-request-id": ticket.request_id}
        while True:
            lease = handed_over.pop() if handed_over else await self._acquire(ticket, tried)
            ticket.attempts += 1
            ticket.queue_wait_s += lease.queue_wait_s
            ticket.worker = lease.worker_url
            self.metrics.queue_wait.labels(self.policy_name).observe(lease.queue_wait_s)
            if self.cfg.engine_priority:
                body["priority"] = lease.engine_priority
            remaining = deadline - self.clock()
            try:
                if remaining <= 0:
                    raise UpstreamFailure("request timeout", worker_down=False)
                outcome = await self._attempt(lease.worker_url, path, body, ticket.stream,
                                              strip_usage, remaining, on_sent, headers)
            except UpstreamFailure as failure:
                self.dispatcher.release(lease)
                self.pool.report_failure(lease.worker_url, failure.reason,
                                         unreachable=failure.worker_down,
                                         timed_out=failure.timed_out)
                tried.add(lease.worker_url)
                log.warning("attempt %d of %s on %s failed: %s", ticket.attempts,
                            ticket.request_id, lease.worker_url, failure.reason)
                if (ticket.attempts >= self.cfg.max_attempts or self.clock() >= deadline
                        or not self.pool.healthy_ids(ticket.model) - tried):
                    raise GatewayError(
                        503, f"No worker could serve the request: {failure.reason}",
                        code="upstream_unavailable", headers={"Retry-After": "1"},
                    ) from None
                self.metrics.retries.labels("worker_down" if failure.worker_down
                                            else "worker_error").inc()
                continue
            except BaseException:
                self.dispatcher.release(lease)
                raise
            if isinstance(outcome, OpenStream) or outcome.status == 200:
                # A 4xx answer comes from vLLM's API server, which answers even while
                # its engine is hung: only a generated answer shows the worker works.
                self.pool.report_answer(lease.worker_url)
            return lease, outcome

    async def _acquire(self, ticket: Ticket, tried: set[str]) -> Lease:
        if not self.pool.healthy_ids(ticket.model) - tried:
            # No worker serving this model is left to try: waiting in the queue for one
            # would only end in the queue time-out.
            raise no_worker_error()
        try:
            return await self.dispatcher.acquire(ticket.queued, frozenset(tried))
        except QueueFull:
            raise GatewayError(
                429, "The gateway's queue is full; retry later.", code="queue_full",
                headers={"Retry-After": str(self.dispatcher.retry_after_s())},
            ) from None
        except NoHealthyWorker:
            raise no_worker_error() from None
        except QueueTimeout:
            raise GatewayError(
                503, "The request waited too long in the queue.", code="queue_timeout",
                headers={"Retry-After": str(self.dispatcher.retry_after_s())},
            ) from None
        except Draining:
            raise draining_error() from None

    async def _attempt(
        self, worker_url: str, path: str, body: dict[str, Any], stream: bool,
        strip_usage: bool, remaining: float, on_sent: Callable[[], None] | None,
        headers: dict[str, str],
    ) -> UpstreamReply | OpenStream:
        url = worker_url + path
        if not stream:
            return await self._abortable(worker_url, post_complete(
                self.session, url, body, remaining, self.cfg.connect_timeout_s, on_sent,
                headers))
        inspector = SSEInspector(self.clock, strip_usage)
        return await self._abortable(worker_url, open_stream(
            self.client, url, body, connect_timeout_s=self.cfg.connect_timeout_s,
            first_event_timeout_s=remaining, inspector=inspector, on_sent=on_sent,
            headers=headers))

    async def _abortable(self, worker_url: str, answer: Awaitable[Any]) -> Any:
        """Wait for a non-streaming answer or a stream's first event for the whole remaining
        request time, unless the stall probe finds the worker hung and aborts the wait (a
        time-out of this block, at once)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as scope:
                attempt = self.pool.open_attempt(worker_url,
                                                 lambda: scope.reschedule(loop.time()))
                try:
                    return await answer
                finally:
                    self.pool.close_attempt(attempt)
        except TimeoutError:
            if not attempt.aborted:
                raise
            raise UpstreamFailure("the worker stalled (its stall probe got no token)",
                                  worker_down=False) from None
