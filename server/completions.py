"""One completion request's life: predict, queue, dispatch, retry, relay, account.

``CompletionService.handle`` is called by the routes with the client's parsed
JSON. It never sees FastAPI types other than the raw ASGI ``receive`` (to
notice a client that leaves while its request waits) and returns a Starlette
response. Accounting (metrics, request log, lease release) happens exactly
once per request, in ``_Finish``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from starlette.responses import Response
from starlette.types import Receive

from predictor.errors import PredictorInputError
from predictor.types import LengthPrediction, LengthPredictor
from server.backends import WorkerPool
from server.config import GatewayConfig
from server.dispatcher import Dispatcher, Draining, Lease, NoHealthyWorker, QueueTimeout
from server.errors import GatewayError, bad_request, upstream_error_status
from server.metrics import GatewayMetrics
from server.online_learning import OnlineLearningPredictor, prompt_of_request
from server.policy import QueuedRequest, QueueFull
from server.proxy import (
    OpenStream,
    ProxyStreamResponse,
    SSEInspector,
    UpstreamFailure,
    UpstreamReply,
    open_stream,
    post_complete,
    wait_for_disconnect,
)
from server.request_log import RequestLog, RequestRecord
from server.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                  "frequency_penalty", "repetition_penalty")


@dataclass(slots=True)
class _Ticket:
    """Everything known about one request while it is handled."""

    request_id: str
    endpoint: str
    model: str
    stream: bool
    n: int
    cap: int | None
    arrival: float
    arrival_unix: float
    #: ``None`` until the prediction is known (it may arrive after dispatch, see ``handle``)
    prediction: LengthPrediction | None
    predicted_tokens: float
    queue_wait_s: float = 0.0
    attempts: int = 0
    worker: str | None = None
    finished: bool = False
    #: prompts in the request (a completions request may hold several); with n, the
    #: number of sequences generated
    prompts: int = 1
    #: seconds from arrival to entering the queue (the length prediction, when awaited)
    queue_entry_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {
            "x-lengthwise-predicted-tokens": f"{self.predicted_tokens:.0f}",
            "x-lengthwise-queue-ms": f"{self.queue_wait_s * 1000.0:.1f}",
            "x-request-id": self.request_id,
        }


class _DeferredPrediction:
    """One request's length prediction, started on demand: before queueing, or (idle path)
    once the request is on its way to the worker. ``start`` may be called any number of
    times (once per attempt); ``result`` starts it if nobody has."""

    def __init__(self, make: Callable[[], Awaitable[tuple[LengthPrediction, float]]]) -> None:
        self._make = make
        self._future: asyncio.Future[tuple[LengthPrediction, float]] | None = None

    def start(self) -> None:
        if self._future is None:
            self._future = asyncio.ensure_future(self._make())

    async def result(self) -> tuple[LengthPrediction, float]:
        self.start()
        assert self._future is not None
        return await self._future


class CompletionService:
    def __init__(
        self,
        cfg: GatewayConfig,
        dispatcher: Dispatcher,
        pool: WorkerPool,
        client: httpx.AsyncClient,
        session: aiohttp.ClientSession,
        predictor: LengthPredictor,
        metrics: GatewayMetrics,
        request_log: RequestLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.pool = pool
        self.client = client  # streams
        self.session = session  # non-streaming answers (see ``upstream_session``)
        self.predictor = predictor
        self.metrics = metrics
        self.request_log = request_log
        self.clock = clock
        self.policy_name = dispatcher.policy.name
        # A typical request size, for the moment between an idle-path dispatch and its
        # own prediction (moving average of recent predictions).
        self._typical_tokens = 100.0

    # --- entry point --------------------------------------------------------------

    async def handle(
        self,
        endpoint: str,
        raw: dict[str, Any],
        parsed: ChatCompletionRequest | CompletionRequest,
        receive: Receive,
    ) -> Response:
        arrival = self.clock()
        # Stamped with ``arrival``: every logged duration (ttft_s, e2e_s) counts from here.
        arrival_unix = time.time()
        if self.dispatcher.draining:
            raise GatewayError(503, "The gateway is shutting down.", code="draining",
                               headers={"Retry-After": "1"})
        self._check_limits(parsed)
        healthy_models = self.pool.served_models()
        if not self.pool.healthy_ids():
            raise _no_worker()
        if parsed.model not in healthy_models:
            raise GatewayError(404, f"The model `{parsed.model}` does not exist.",
                               param="model", code="model_not_found")
        request_id = f"lw-{uuid.uuid4().hex}"
        # With nothing queued and a free slot, the prediction cannot change where or when
        # the request runs: take the slot now, dispatch, and predict once the request is
        # on the wire, while the worker computes, keeping the predictor (and its hold on
        # the GIL) off the critical path at low load. Otherwise the queue needs it first.
        idle_lease = None
        if self.cfg.predict_after_dispatch_when_idle:
            idle_lease = self.dispatcher.try_acquire_now(
                QueuedRequest(request_id, arrival, self._typical_tokens))
        predict_later = idle_lease is not None
        predicting = _DeferredPrediction(lambda: self._predict_async(endpoint, parsed))
        if predict_later:
            prediction, predicted = None, self._typical_tokens
        else:
            try:
                prediction, predicted = await predicting.result()
            except PredictorInputError as exc:
                raise bad_request(str(exc), code="invalid_value") from None
            self.metrics.predicted_tokens.observe(predicted)
        # The idle lease is handed over through this list: ``_dispatch`` takes it when it
        # starts; whatever is left (the task cancelled before it ran) is given back here.
        handed_over = [idle_lease] if idle_lease is not None else []
        try:
            ticket = _Ticket(
                request_id=request_id, endpoint=endpoint, model=parsed.model,
                stream=parsed.stream, n=parsed.n, cap=parsed.length_cap(), arrival=arrival,
                arrival_unix=arrival_unix, prediction=prediction, predicted_tokens=predicted,
                prompts=(len(parsed.prompt_texts()) if isinstance(parsed, CompletionRequest)
                         else 1),
                queue_entry_s=self.clock() - arrival,
            )
            if isinstance(self.predictor, OnlineLearningPredictor):
                ticket.extra["learn_prompt"] = prompt_of_request(parsed)
            body, strip_usage = self._upstream_body(raw, parsed)
        except BaseException:
            self._give_back(handed_over)
            raise
        work = asyncio.ensure_future(self._dispatch(
            ticket, body, strip_usage, predicting.start if predict_later else None,
            handed_over))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            gone.cancel()
            self._give_back(handed_over)
            raise
        if gone.done():
            # The client left, possibly in the same instant the work finished: then
            # ``gone`` has consumed the disconnect, and a stream relayed from here would
            # never see it (vLLM would decode to the end for nobody), so close it here.
            if not work.done():
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            self._give_back(handed_over)
            if not work.cancelled() and work.exception() is None:
                lease, outcome = work.result()
                if isinstance(outcome, OpenStream):
                    await outcome.aclose()
                self.dispatcher.release(lease)
            await self._settle_prediction(ticket, predicting, None)
            self._record(ticket, None, "client_disconnected", 499, None)
            return Response(status_code=400)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        try:
            lease, outcome = work.result()
        except GatewayError as err:
            await self._settle_prediction(ticket, predicting, None)
            self._record(ticket, None, err.code or "error", err.status, None)
            return err.response(ticket.headers())
        if ticket.prediction is None:
            try:
                await self._settle_prediction(ticket, predicting, lease)
            except PredictorInputError as exc:
                if isinstance(outcome, OpenStream):
                    await outcome.aclose()
                self.dispatcher.release(lease)
                err = bad_request(str(exc), code="invalid_value")
                self._record(ticket, None, "invalid_value", 400, None)
                return err.response()
        if isinstance(outcome, UpstreamReply):
            return self._finish_reply(ticket, lease, outcome)
        return self._stream_response(ticket, lease, outcome)

    def _give_back(self, handed_over: list[Lease]) -> None:
        """Release an idle lease that ``_dispatch`` never took (it was cancelled unstarted)."""
        while handed_over:
            self.dispatcher.release(handed_over.pop())

    # --- request preparation ------------------------------------------------------

    def _check_limits(self, parsed: ChatCompletionRequest | CompletionRequest) -> None:
        if parsed.n > self.cfg.max_n:
            raise bad_request(f"n must be at most {self.cfg.max_n}", param="n",
                              code="invalid_value")
        if isinstance(parsed, CompletionRequest):
            prompts = parsed.prompt
            is_batch = (isinstance(prompts, list) and prompts
                        and not isinstance(prompts[0], int))
            if is_batch and len(prompts) > self.cfg.max_prompts_per_request:
                raise bad_request(
                    f"at most {self.cfg.max_prompts_per_request} prompts per request",
                    param="prompt", code="invalid_value")

    async def _predict_async(
        self, endpoint: str, parsed: ChatCompletionRequest | CompletionRequest
    ) -> tuple[LengthPrediction, float]:
        if self.cfg.predict_in_thread:
            return await asyncio.to_thread(self._predict, endpoint, parsed)
        return self._predict(endpoint, parsed)

    async def _settle_prediction(
        self, ticket: _Ticket, predicting: _DeferredPrediction, lease: Lease | None
    ) -> None:
        """Fill in a prediction that was left for after dispatch (no-op otherwise).

        With a lease, the worker's load is repriced and ``PredictorInputError`` propagates;
        without one (the request ended early) a failed prediction is simply left out."""
        if ticket.prediction is not None:
            return
        try:
            prediction, predicted = await predicting.result()
        except PredictorInputError:
            if lease is not None:
                raise
            return
        ticket.prediction, ticket.predicted_tokens = prediction, predicted
        self.metrics.predicted_tokens.observe(predicted)
        if lease is not None:
            self.dispatcher.reprice(lease, predicted)

    def _predict(
        self, endpoint: str, parsed: ChatCompletionRequest | CompletionRequest
    ) -> tuple[LengthPrediction, float]:
        """The per-choice prediction, and the total predicted tokens the queue ranks by."""
        sampling = {k: getattr(parsed, k, None) for k in _SAMPLING_KEYS}
        sampling = {k: v for k, v in sampling.items() if v is not None}
        cap = parsed.length_cap()
        if isinstance(parsed, ChatCompletionRequest):
            messages = [m.model_dump(exclude_none=True) for m in parsed.messages]
            preds = [self.predictor.predict(messages, parsed.model, cap, sampling)]
        else:
            texts = parsed.prompt_texts()
            preds = self.predictor.predict_batch(
                texts, [parsed.model] * len(texts), [cap] * len(texts), [sampling] * len(texts)
            )
        # Sums over prompts (a completions request may hold several); the p50/p90 of a
        # sum is not the sum of p50/p90s, but these are logged, not ranked, except as
        # the chosen point estimate.
        total = LengthPrediction(
            mean=sum(p.mean for p in preds), p50=sum(p.p50 for p in preds),
            p90=sum(p.p90 for p in preds), model_known=all(p.model_known for p in preds),
        )
        point = max(1.0, total.point(self.cfg.point_estimate.value) * parsed.n)
        self._typical_tokens += 0.05 * (point - self._typical_tokens)
        return total, point

    def _upstream_body(
        self, raw: dict[str, Any], parsed: ChatCompletionRequest | CompletionRequest
    ) -> tuple[dict[str, Any], bool]:
        body = dict(raw)
        explicit_edt = "edt" in body
        body.pop("edt", None)
        xargs: dict[str, Any] = {}
        client_xargs = parsed.vllm_xargs or {}
        says_edt = explicit_edt or any(k.startswith("edt_") for k in client_xargs)
        if not says_edt and self.cfg.edt_default:
            xargs.update(self.cfg.edt_default)
        xargs.update(client_xargs)
        if parsed.edt is not None:
            xargs.update(parsed.edt.as_xargs())
        if xargs:
            body["vllm_xargs"] = xargs
        else:
            body.pop("vllm_xargs", None)
        strip_usage = False
        if parsed.stream:
            options = dict(body.get("stream_options") or {})
            if not options.get("include_usage"):
                # Ask for usage so the log knows the real length, and drop that chunk again.
                options["include_usage"] = True
                strip_usage = True
            body["stream_options"] = options
        if not self.cfg.engine_priority:
            body.pop("priority", None)
        return body, strip_usage

    # --- dispatch and retries -------------------------------------------------------

    async def _dispatch(
        self, ticket: _Ticket, body: dict[str, Any], strip_usage: bool,
        on_sent: Callable[[], None] | None, handed_over: list[Lease],
    ) -> tuple[Lease, UpstreamReply | OpenStream]:
        queued = QueuedRequest(ticket.request_id, ticket.arrival, ticket.predicted_tokens)
        tried: set[str] = set()
        deadline = ticket.arrival + self.cfg.request_timeout_s
        path = PATHS[ticket.endpoint]
        while True:
            try:
                if handed_over:
                    lease = handed_over.pop()
                else:
                    lease = await self.dispatcher.acquire(queued, frozenset(tried))
            except QueueFull:
                raise GatewayError(
                    429, "The gateway's queue is full; retry later.", code="queue_full",
                    headers={"Retry-After": str(self.dispatcher.retry_after_s())},
                ) from None
            except NoHealthyWorker:
                raise _no_worker() from None
            except QueueTimeout:
                raise GatewayError(
                    503, "The request waited too long in the queue.", code="queue_timeout",
                    headers={"Retry-After": str(self.dispatcher.retry_after_s())},
                ) from None
            except Draining:
                raise GatewayError(503, "The gateway is shutting down.", code="draining",
                                   headers={"Retry-After": "1"}) from None
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
                outcome = await self._attempt(lease.worker_url + path, body, ticket.stream,
                                              strip_usage, remaining, on_sent)
            except UpstreamFailure as failure:
                self.dispatcher.release(lease)
                self.pool.report_failure(lease.worker_url, failure.reason,
                                         immediate=failure.worker_down)
                tried.add(lease.worker_url)
                log.warning("attempt %d of %s on %s failed: %s", ticket.attempts,
                            ticket.request_id, lease.worker_url, failure.reason)
                if ticket.attempts >= self.cfg.max_attempts or self.clock() >= deadline:
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
            return lease, outcome

    async def _attempt(
        self, url: str, body: dict[str, Any], stream: bool, strip_usage: bool, remaining: float,
        on_sent: Callable[[], None] | None,
    ) -> UpstreamReply | OpenStream:
        if not stream:
            # first_byte_timeout_s bounds the whole answer (see config), leaving time to retry.
            return await post_complete(self.session, url, body,
                                       min(self.cfg.first_byte_timeout_s, remaining),
                                       self.cfg.connect_timeout_s, on_sent)
        inspector = SSEInspector(self.clock, strip_usage)
        return await open_stream(
            self.client, url, body, connect_timeout_s=self.cfg.connect_timeout_s,
            first_event_timeout_s=min(self.cfg.first_byte_timeout_s, remaining),
            inspector=inspector, on_sent=on_sent,
        )

    # --- responses and accounting --------------------------------------------------

    def _finish_reply(self, ticket: _Ticket, lease: Lease, reply: UpstreamReply) -> Response:
        now = self.clock()
        self.dispatcher.release(lease, now - ticket.arrival - ticket.queue_wait_s)
        headers = ticket.headers()
        if reply.status != 200:
            status = upstream_error_status(reply.status)
            self._record(ticket, None, "upstream_client_error", status, None)
            return Response(reply.body, status_code=status, headers=headers,
                            media_type=reply.content_type or "application/json")
        usage, reasons = _usage_of(reply.body)
        self._record(ticket, usage, "ok", 200, None, reasons, e2e_end=now)
        return Response(reply.body, status_code=200, headers=headers,
                        media_type=reply.content_type or "application/json")

    def _stream_response(self, ticket: _Ticket, lease: Lease, stream: OpenStream) -> Response:
        def on_finish(outcome: str) -> None:
            now = self.clock()
            self.dispatcher.release(lease, now - ticket.arrival - ticket.queue_wait_s)
            stats = stream.inspector.stats
            if outcome in ("stream_timeout", "upstream_error") and stats.error is None:
                self.pool.report_failure(lease.worker_url, f"stream {outcome}",
                                         immediate=False)
            reasons = [stats.finish_reasons[i] for i in sorted(stats.finish_reasons)]
            http_status = 200 if outcome == "ok" else 499 if outcome == "client_disconnected" else 503
            self._record(ticket, stats.usage, outcome, http_status, stats.first_token_at,
                         reasons, e2e_end=now)

        return ProxyStreamResponse(
            stream, ticket.headers(), self.cfg.stream_idle_timeout_s, on_finish
        )

    def _record(
        self,
        ticket: _Ticket,
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
        if status == "ok":
            self.metrics.e2e.labels(*labels).observe(e2e)
            if usage:
                prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
                completion_tokens = _int_or_none(usage.get("completion_tokens"))
            if prompt_tokens is not None:
                self.metrics.prompt_tokens.inc(prompt_tokens)
            if completion_tokens is not None:
                self.metrics.completion_tokens.inc(completion_tokens)
                if completion_tokens > 0 and ticket.prediction is not None:
                    self.metrics.prediction_ratio.observe(
                        ticket.predicted_tokens / completion_tokens
                    )
                # The p90 is per sequence and usage only reports the sum over sequences,
                # so coverage is only known exactly for a single sequence.
                if ticket.prediction is not None and ticket.n == 1 and ticket.prompts == 1:
                    self.metrics.observe_p90_coverage(ticket.model, completion_tokens,
                                                      ticket.prediction.p90)
            if ttft is not None:
                self.metrics.ttft.labels(*labels).observe(ttft)
                if completion_tokens and completion_tokens > 1:
                    self.metrics.tpot.labels(*labels).observe(
                        (e2e - ttft) / (completion_tokens - 1)
                    )
        pred = ticket.prediction
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
        if (isinstance(self.predictor, OnlineLearningPredictor) and status == "ok"
                and completion_tokens is not None and ticket.n >= 1):
            self.predictor.observe(ticket.model, ticket.extra.get("learn_prompt"), pred.mean,
                                   completion_tokens / ticket.n, ticket.cap)


def _usage_of(body: bytes) -> tuple[dict[str, Any] | None, list[str | None]]:
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


def _no_worker() -> GatewayError:
    return GatewayError(503, "No healthy worker is available.", code="no_healthy_worker",
                        headers={"Retry-After": "2"})
