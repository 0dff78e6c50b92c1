"""One completion request's life: size it, queue it, dispatch it, relay the answer.

``CompletionService.handle`` is called by the routes with the client's parsed JSON. It
never sees FastAPI types other than the raw ASGI ``receive`` (to notice a client that
leaves while its request waits) and returns a Starlette response. The stages are
modules of their own: ``sizing`` (prediction and sizes), ``upstream_request`` (the body
for the worker), ``attempts`` (lease, send, retry) and ``accounting`` (the response and
everything counted about the request, exactly once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
from starlette.responses import Response
from starlette.types import Receive

from predictor.errors import PredictorInputError
from predictor.types import LengthFeedback, LengthPredictor
from server.accounting import Accounting
from server.attempts import Attempts, draining_error, no_worker_error
from server.backends import WorkerPool
from server.config import GatewayConfig
from server.dispatcher import Dispatcher, Lease
from server.errors import GatewayError, bad_request
from server.metrics import GatewayMetrics
from server.proxy import OpenStream, UpstreamReply, wait_for_disconnect
from server.refinement import QueueRefiner
from server.request_log import RequestLog
from server.schemas import ChatCompletionRequest, CompletionRequest
from server.sizing import DeferredPrediction, RequestSizer
from server.ticket import Ticket
from server.upstream_request import check_limits, upstream_body

Parsed = ChatCompletionRequest | CompletionRequest


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
        learner: LengthFeedback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.pool = pool
        self.metrics = metrics
        self.learner = learner
        self.clock = clock
        self.sizer = RequestSizer(predictor, cfg.point_estimate, cfg.predict_in_thread)
        self.attempts = Attempts(cfg, dispatcher, pool, client, session, metrics, clock)
        #: the second stage for requests that wait (``server.refinement``), when on
        self.refiner: QueueRefiner | None = None
        self.accounting = Accounting(dispatcher, pool, metrics, request_log, self.sizer,
                                     learner, cfg.stream_idle_timeout_s, clock)

    async def handle(self, endpoint: str, raw: dict[str, Any], parsed: Parsed,
                     receive: Receive) -> Response:
        arrival = self.clock()
        # Stamped with ``arrival``: every logged duration (ttft_s, e2e_s) counts from here.
        arrival_unix = time.time()
        self._check_acceptable(parsed)
        ticket = self._ticket(endpoint, parsed, arrival, arrival_unix)
        # With nothing queued and a running slot free, the prediction cannot change where
        # or when the request runs: take the slot now, dispatch, and predict once the
        # request is on the wire, keeping the predictor (and its hold on the GIL) off the
        # critical path at low load. Otherwise the queue (or the engine's priority) needs
        # it first.
        idle_lease = (self.dispatcher.try_acquire_now(ticket.queued)
                      if self.cfg.predict_after_dispatch_when_idle else None)
        predicting = DeferredPrediction(lambda: self.sizer.predict(parsed))
        if idle_lease is None:
            try:
                prediction, point = await predicting.result()
            except PredictorInputError as exc:
                raise bad_request(str(exc), code="invalid_value") from None
            self._set_prediction(ticket, prediction, point)
            if self.refiner is not None:
                self.refiner.submit(ticket, parsed)
        ticket.queue_entry_s = self.clock() - arrival
        # The idle lease is handed over through this list: ``Attempts.run`` takes it when
        # it starts; whatever is left (the task cancelled before it ran) is given back here.
        handed_over = [idle_lease] if idle_lease is not None else []
        try:
            body, strip_usage = upstream_body(self.cfg, raw, parsed)
        except BaseException:
            self._give_back(handed_over)
            raise
        work = asyncio.ensure_future(self.attempts.run(
            ticket, body, strip_usage, predicting.start if idle_lease else None, handed_over))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            gone.cancel()
            self._give_back(handed_over)
            raise
        if gone.done():
            return await self._client_left(ticket, work, predicting, handed_over)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        return await self._respond(ticket, work, predicting)

    def _check_acceptable(self, parsed: Parsed) -> None:
        """Refuse at once what no worker could serve now (OpenAI-format errors)."""
        if self.dispatcher.draining:
            raise draining_error()
        check_limits(self.cfg, parsed)
        if not self.pool.healthy_ids():
            raise no_worker_error()
        if parsed.model not in self.pool.served_models():
            raise GatewayError(404, f"The model `{parsed.model}` does not exist.",
                               param="model", code="model_not_found")
        if not self.pool.healthy_ids(parsed.model):
            raise no_worker_error()  # its workers are all out of rotation for now

    async def _respond(self, ticket: Ticket, work: asyncio.Future,
                       predicting: DeferredPrediction) -> Response:
        """The client's response once the attempts are over: the answer, its stream, or
        the error; each accounted for."""
        try:
            lease, outcome = work.result()
        except GatewayError as err:
            await self._settle_prediction(ticket, predicting, None)
            self.accounting.record(ticket, None, err.code or "error", err.status, None)
            return err.response(ticket.headers())
        if ticket.prediction is None:
            try:
                await self._settle_prediction(ticket, predicting, lease)
            except PredictorInputError as exc:
                if isinstance(outcome, OpenStream):
                    await outcome.aclose()
                self.dispatcher.release(lease)
                self.accounting.record(ticket, None, "invalid_value", 400, None)
                return bad_request(str(exc), code="invalid_value").response()
        if isinstance(outcome, UpstreamReply):
            return self.accounting.reply(ticket, lease, outcome)
        return self.accounting.stream(ticket, lease, outcome)

    def _ticket(self, endpoint: str, parsed: Parsed, arrival: float,
                arrival_unix: float) -> Ticket:
        request_id = f"lw-{uuid.uuid4().hex}"
        ticket = Ticket(
            request_id=request_id, endpoint=endpoint, model=parsed.model,
            stream=parsed.stream, n=parsed.n, cap=parsed.length_cap(), arrival=arrival,
            arrival_unix=arrival_unix, queued=self.sizer.provisional(request_id, arrival, parsed),
            prompts=(len(parsed.prompt_texts()) if isinstance(parsed, CompletionRequest) else 1),
            prompt_chars=parsed.prompt_size()[0],
        )
        if self.learner is not None:
            from server.online_learning import prompt_of_request

            ticket.learn_prompt = prompt_of_request(parsed)
        return ticket

    def _set_prediction(self, ticket: Ticket, prediction, point: float) -> None:
        ticket.prediction = prediction
        ticket.queued = self.sizer.sized(ticket.queued, prediction, point, ticket.n)
        self.metrics.predicted_tokens.observe(point)

    async def _client_left(self, ticket: Ticket, work: asyncio.Future,
                           predicting: DeferredPrediction, handed_over: list[Lease]) -> Response:
        # The client left, possibly in the same instant the work finished: then ``gone``
        # has consumed the disconnect, and a stream relayed from here would never see it
        # (vLLM would decode to the end for nobody), so close it here.
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
        self.accounting.record(ticket, None, "client_disconnected", 499, None)
        return Response(status_code=400)

    def _give_back(self, handed_over: list[Lease]) -> None:
        """Release an idle lease that ``Attempts.run`` never took (it was cancelled unstarted)."""
        while handed_over:
            self.dispatcher.release(handed_over.pop())

    async def _settle_prediction(self, ticket: Ticket, predicting: DeferredPrediction,
                                 lease: Lease | None) -> None:
        """Fill in a prediction that was left for after dispatch (no-op otherwise).

        With a lease, the worker's load is resized and ``PredictorInputError`` propagates;
        without one (the request ended early) a failed prediction is simply left out."""
        if ticket.prediction is not None:
            return
        try:
            prediction, point = await predicting.result()
        except PredictorInputError:
            if lease is not None:
                raise
            return
        self._set_prediction(ticket, prediction, point)
        if lease is not None:
            self.dispatcher.resize(lease, ticket.queued)
