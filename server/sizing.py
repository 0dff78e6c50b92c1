"""How big a request is: its length prediction, and what the queue and admission count.

A request's size for the policy is its predicted output (the configured point estimate,
times ``n``, summed over the prompts of a completions request) and its prompt tokens;
admission also counts its predicted KV footprint (prompt + p90 output). The gateway does
not tokenize: a text prompt's tokens are its characters times the tokens per character
learned from the usage the workers report (token-id prompts say theirs exactly).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace

from predictor.types import LengthPrediction, LengthPredictor, PromptOrMessages
from server.policy import PointEstimate, QueuedRequest, predicted_size
from server.schemas import ChatCompletionRequest, CompletionRequest

Parsed = ChatCompletionRequest | CompletionRequest

_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                  "frequency_penalty", "repetition_penalty")
#: English text in Llama-family tokenizers, until usage says otherwise
_INITIAL_TOKENS_PER_CHAR = 0.25
#: an ordinary answer, until predictions say otherwise
_INITIAL_TYPICAL_TOKENS = 100.0


class DeferredPrediction:
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


class RequestSizer:
    def __init__(self, predictor: LengthPredictor, point_estimate: PointEstimate,
                 predict_in_thread: bool) -> None:
        self.predictor = predictor
        self.point_estimate = point_estimate
        self.predict_in_thread = predict_in_thread
        # Moving averages, learned as the gateway runs: a typical request size (the
        # provisional size between an idle-path dispatch and its own prediction) and
        # the prompt's tokens per character.
        self.typical_tokens = _INITIAL_TYPICAL_TOKENS
        self.tokens_per_char = _INITIAL_TOKENS_PER_CHAR

    def provisional(self, request_id: str, arrival: float, parsed: Parsed) -> QueuedRequest:
        """The request before its length is predicted: a typical size."""
        prompt_tokens = self.prompt_tokens(parsed)
        return QueuedRequest(request_id, arrival, self.typical_tokens, prompt_tokens,
                             parsed.priority, parsed.model,
                             kv_tokens=prompt_tokens + self.typical_tokens)

    def sized(self, queued: QueuedRequest, prediction: LengthPrediction, point: float,
              n: int) -> QueuedRequest:
        """``queued`` with its predicted sizes."""
        # A broken p90 (NaN, inf) would poison a worker's in-flight KV sum for good.
        p90 = prediction.p90 * n if math.isfinite(prediction.p90) else predicted_size(point)
        return replace(queued, predicted_tokens=point,
                       kv_tokens=queued.prompt_tokens + p90)

    def prompt_tokens(self, parsed: Parsed) -> int:
        chars, token_ids = parsed.prompt_size()
        return token_ids + round(chars * self.tokens_per_char)

    def learn_prompt_tokens(self, prompt_chars: int, prompt_tokens: int | None) -> None:
        """A worker reported a request's prompt tokens (chat templates included)."""
        if prompt_tokens and prompt_chars >= 200:
            ratio = prompt_tokens / prompt_chars
            self.tokens_per_char += 0.05 * (ratio - self.tokens_per_char)

    async def predict(self, parsed: Parsed) -> tuple[LengthPrediction, float]:
        if self.predict_in_thread:
            return await asyncio.to_thread(self._predict, parsed)
        return self._predict(parsed)

    def _predict(self, parsed: Parsed) -> tuple[LengthPrediction, float]:
        """The per-choice prediction, and the total predicted tokens the queue ranks by."""
        sampling = {k: getattr(parsed, k, None) for k in _SAMPLING_KEYS}
        sampling = {k: v for k, v in sampling.items() if v is not None}
        prompts = prompts_of(parsed)
        n = len(prompts)
        preds = self.predictor.predict_batch(prompts, [parsed.model] * n,
                                             [parsed.length_cap()] * n, [sampling] * n)
        total, point = self.total(parsed, preds)
        if math.isfinite(point):
            self.typical_tokens += 0.05 * (max(1.0, point) - self.typical_tokens)
        return total, point

    def total(self, parsed: Parsed,
              preds: list[LengthPrediction]) -> tuple[LengthPrediction, float]:
        """One prediction per prompt of the request -> the request's prediction and the
        point the queue ranks by (the configured estimate, times ``n``)."""
        # Sums over prompts (a completions request may hold several); the p50/p90 of a
        # sum is not the sum of p50/p90s, but these are logged, not ranked, except as
        # the chosen point estimate.
        total = LengthPrediction(
            mean=sum(p.mean for p in preds), p50=sum(p.p50 for p in preds),
            p90=sum(p.p90 for p in preds), model_known=all(p.model_known for p in preds),
        )
        # Not clamped here: a broken (non-finite) prediction is the policy's to rank
        # (``server.policy.predicted_size``).
        return total, total.point(self.point_estimate.value) * parsed.n


def prompts_of(parsed: Parsed) -> list[PromptOrMessages]:
    """What the predictor reads of a request: its chat messages, or each prompt's text."""
    if isinstance(parsed, ChatCompletionRequest):
        return [[m.model_dump(exclude_none=True) for m in parsed.messages]]
    return list(parsed.prompt_texts())
