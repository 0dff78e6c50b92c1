"""The second stage: a slower, better prediction for requests that wait in the queue.

A request is ranked at arrival by the cheap first-stage prediction. When it has to
wait, :class:`QueueRefiner` runs the predictor's second stage (``predictor.refine``: a
sentence embedding fed to LightGBM) on it in a worker thread, a few waiting requests at
a time, and re-ranks it in the queue if it is still there (``Dispatcher.reprioritize``).
A request that leaves the queue first is skipped, so the cost falls only on requests
whose wait hides it. Off by default (``second_stage``): on a CPU worker's own cores
the embedding competes with decoding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from predictor.refine import SecondStage
from server.dispatcher import Dispatcher
from server.schemas import ChatCompletionRequest, CompletionRequest
from server.sizing import RequestSizer, prompts_of
from server.ticket import Ticket

log = logging.getLogger(__name__)

Parsed = ChatCompletionRequest | CompletionRequest


@dataclass(slots=True)
class _Pending:
    ticket: Ticket
    parsed: Parsed


class QueueRefiner:
    def __init__(self, stage: SecondStage, dispatcher: Dispatcher, sizer: RequestSizer,
                 batch_size: int = 4, on_refined: Callable[[Ticket], None] | None = None,
                 ) -> None:
        self.stage = stage
        self.dispatcher = dispatcher
        self.sizer = sizer
        self.batch_size = batch_size
        self.on_refined = on_refined
        self._pending: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def submit(self, ticket: Ticket, parsed: Parsed) -> None:
        """Refine this request if it is still waiting when its turn comes."""
        self._pending.put_nowait(_Pending(ticket, parsed))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < self.batch_size and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            waiting, not_yet = [], []
            for p in batch:
                if p.ticket.request_id in self.dispatcher.queue:
                    waiting.append(p)
                elif p.ticket.attempts == 0 and not p.ticket.finished:
                    not_yet.append(p)  # predicted, not yet pushed into the queue
            for p in not_yet:
                self._pending.put_nowait(p)
            if not waiting:
                if not_yet:
                    await asyncio.sleep(0.001)
                continue
            try:
                refined = await asyncio.to_thread(self._refine, waiting)
            except Exception:  # a refinement must never take the gateway down
                log.exception("second-stage prediction failed; first-stage ranks stand")
                continue
            for pending, (prediction, point) in zip(waiting, refined):
                ticket = pending.ticket
                new = self.sizer.sized(ticket.queued, prediction, point, ticket.n)
                if self.dispatcher.reprioritize(new):
                    ticket.queued, ticket.prediction = new, prediction
                    if self.on_refined is not None:
                        self.on_refined(ticket)

    def _refine(self, waiting: list[_Pending]):
        prompts, models, caps, owners = [], [], [], []
        for i, pending in enumerate(waiting):
            own = prompts_of(pending.parsed)
            prompts += own
            models += [pending.parsed.model] * len(own)
            caps += [pending.parsed.length_cap()] * len(own)
            owners += [i] * len(own)
        preds = self.stage.refine_batch(prompts, models, caps)
        return [self.sizer.total(p.parsed, [pr for pr, o in zip(preds, owners) if o == i])
                for i, p in enumerate(waiting)]
