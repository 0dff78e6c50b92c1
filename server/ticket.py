"""One request's state while the gateway handles it, shared by the stages that handle it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from predictor.types import LengthPrediction, PromptOrMessages
from server.policy import QueuedRequest


@dataclass(slots=True)
class Ticket:
    """Everything known about one request while it is handled."""

    request_id: str
    endpoint: str
    model: str
    stream: bool
    n: int
    cap: int | None
    arrival: float
    arrival_unix: float
    #: what the queue and the worker's load count; sizes are provisional until the
    #: prediction is known (it may arrive after dispatch, see ``CompletionService``)
    queued: QueuedRequest
    #: ``None`` until the prediction is known
    prediction: LengthPrediction | None = None
    queue_wait_s: float = 0.0
    attempts: int = 0
    worker: str | None = None
    finished: bool = False
    #: prompts in the request (a completions request may hold several); with n, the
    #: number of sequences generated
    prompts: int = 1
    #: characters of prompt text, for learning the tokens per character from usage
    prompt_chars: int = 0
    #: seconds from arrival to entering the queue (the length prediction, when awaited)
    queue_entry_s: float = 0.0
    #: the prompt handed to online learning, when it is on
    learn_prompt: PromptOrMessages | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_tokens(self) -> float:
        return self.queued.predicted_tokens

    def headers(self) -> dict[str, str]:
        return {
            "x-lengthwise-predicted-tokens": f"{self.predicted_tokens:.0f}",
            "x-lengthwise-queue-ms": f"{self.queue_wait_s * 1000.0:.1f}",
            "x-request-id": self.request_id,
        }
