"""The end of a request: its response, and everything counted about it exactly once.

Metrics, the request log, the lease's release, what the sizer learns (prompt tokens per
character) and what online learning learns (the true length) all happen in
:meth:`Accounting.record`, once per request whatever way it ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response

from predictor.types import LengthFeedback
from server.backends import WorkerPool
from server.dispatcher import Dispatcher, Lease
from server.errors import upstream_error_status
from server.metrics import GatewayMetrics
from server.proxy import OpenStream, ProxyStreamResponse, UpstreamReply
from server.request_log import RequestLog, RequestRecord
from server.sizing import RequestSizer
from server.ticket import Ticket


class Accounting:
    def __init__(self, dispatcher: Dispatcher, pool: WorkerPool, metrics: GatewayMetrics,
                 request_log: RequestLog, sizer: RequestSizer, learner: LengthFeedback | None,
                 stream_idle_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.metrics = metrics
        self.request_log = request_log
        self.sizer = sizer
        self.learner = learner
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.clock = clock
        self.policy_name = dispatcher.policy.name

    def reply(self, ticket: Ticket, lease: Lease, reply: UpstreamReply) -> Response:
        """A complete (non-streaming) answer, or a worker's error answer, to the client."""
        now = self.clock()
        self.dispatcher.release(lease, now - ticket.arrival - ticket.queue_wait_s)
        headers = ticket.headers()
        if reply.status != 200:
            status = upstream_error_status(reply.status)
            self.record(ticket, None, "upstream_client_error", status, None)
            return Response(reply.body, status_code=status, headers=headers,
                            media_type=reply.content_type or "application/json")
        usage, reasons = usage_of(reply.body)
        self.record(ticket, usage, "ok", 200, None, reasons, e2e_end=now)
        return Response(reply.body, status_code=200, headers=headers,
                        media_type=reply.content_type or "application/json")

    def stream(self, ticket: Ticket, lease: Lease, stream: OpenStream) -> Response:
        """The relayed stream; accounted when it ends, however it ends."""

        def on_finish(outcome: str) -> None:
            now = self.clock()
            self.dispatcher.release(lease, now - ticket.arrival - ticket.queue_wait_s)
            stats = stream.inspector.stats
            if outcome in ("stream_timeout", "upstream_error") and stats.error is None:
                self.pool.report_failure(lease.worker_url, f"stream {outcome}",
                                         timed_out=outcome == "stream_timeout")
            reasons = [stats.finish_reasons[i] for i in sorted(stats.finish_reasons)]
            http_status = (200 if outcome == "ok"
                           else 499 if outcome == "client_disconnected" else 503)
            self.record(ticket, stats.usage, outcome, http_status, stats.first_token_at,
                        reasons, e2e_end=now)

        return ProxyStreamResponse(stream, ticket.headers(), self.stream_idle_timeout_s,
                                   on_finish)

    def record(
        self,
        ticket: Ticket,
        usage: dict[str, Any] | None,
        status: str,
        http_status: int,
        first_token_at: float | None,
        finish_reasons: list[str | None] | None = None,
        e2e_end: float | None = None,
    ) -> None:
        if ticket.finished:
            return
        ticket.finished = True
        end = e2e_end if e2e_end is not None else self.clock()
        e2e = end - ticket.arrival
        labels = (ticket.endpoint, self.policy_name)
        self.metrics.requests.labels(*labels, status).inc()
        prompt_tokens = completion_tokens = None
        ttft = first_token_at - ticket.arrival if first_token_at is not None else None
        pred = ticket.prediction
        if status == "ok":
            self.metrics.e2e.labels(*labels).observe(e2e)
            if usage:
                prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
                completion_tokens = _int_or_none(usage.get("completion_tokens"))
            if prompt_tokens is not None:
                self.metrics.prompt_tokens.inc(prompt_tokens)
                self.sizer.learn_prompt_tokens(ticket.prompt_chars, prompt_tokens)
            if completion_tokens is not None:
                self.metrics.completion_tokens.inc(completion_tokens)
                if completion_tokens > 0 and pred is not None:
                    self.metrics.prediction_ratio.observe(
                        ticket.predicted_tokens / completion_tokens)
                # The p90 is per sequence and usage only reports the sum over sequences,
                # so coverage is only known exactly for a single sequence.
                if pred is not None and ticket.n == 1 and ticket.prompts == 1:
                    self.metrics.observe_p90_coverage(ticket.model, completion_tokens, pred.p90)
            if ttft is not None:
                self.metrics.ttft.labels(*labels).observe(ttft)
                if completion_tokens and completion_tokens > 1:
                    self.metrics.tpot.labels(*labels).observe(
                        (e2e - ttft) / (completion_tokens - 1))
        self.request_log.write(RequestRecord(
            request_id=ticket.request_id, arrival_unix=ticket.arrival_unix,
            endpoint=ticket.endpoint, model=ticket.model, stream=ticket.stream, n=ticket.n,
            max_tokens=ticket.cap, policy=self.policy_name, status=status,
            http_status=http_status, prompt_tokens=prompt_tokens,
            predicted_mean=pred.mean if pred else None,
            predicted_p50=pred.p50 if pred else None, predicted_p90=pred.p90 if pred else None,
            predicted_tokens=ticket.predicted_tokens if pred else None,
            completion_tokens=completion_tokens,
            finish_reasons=finish_reasons or [], worker=ticket.worker,
            attempts=ticket.attempts,
            queue_wait_s=ticket.queue_wait_s if ticket.attempts else None,
            ttft_s=ttft, e2e_s=e2e, queue_entry_s=ticket.queue_entry_s,
        ))
        if (self.learner is not None and status == "ok" and pred is not None
                and completion_tokens is not None and ticket.n >= 1):
            self.learner.observe(ticket.model, ticket.learn_prompt, pred.mean,
                                 completion_tokens / ticket.n, ticket.cap)


def usage_of(body: bytes) -> tuple[dict[str, Any] | None, list[str | None]]:
    try:
        data = json.loads(body)
    except ValueError:
        return None, []
    if not isinstance(data, dict):
        return None, []
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    choices = data.get("choices") if isinstance(data.get("choices"), list) else []
    return usage, [c.get("finish_reason") for c in choices if isinstance(c, dict)]


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None
