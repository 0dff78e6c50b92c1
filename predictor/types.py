"""Types at the predictor's boundary, shared by the gateway and the simulator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: A prompt as a plain string or as OpenAI chat messages.
PromptOrMessages = str | Sequence[dict]


@dataclass(frozen=True, slots=True)
class LengthPrediction:
    """Predicted completion length in tokens, each capped by the request's ``max_tokens``."""

    mean: float
    p50: float
    p90: float
    #: True when the model name was seen in training; False when the
    #: model-agnostic path answered
    model_known: bool = True

    def point(self, estimate: str) -> float:
        """The point estimate the scheduler ranks by: ``mean``, ``p50`` or ``p90``."""
        return float(getattr(self, estimate))


class LengthPredictor(Protocol):
    def predict(
        self,
        prompt: PromptOrMessages,
        model: str,
        max_tokens: int | None = None,
        sampling: dict | None = None,
    ) -> LengthPrediction: ...

    def predict_batch(
        self,
        prompts: Sequence[PromptOrMessages],
        models: Sequence[str],
        max_tokens: Sequence[int | None] | None = None,
        samplings: Sequence[dict | None] | None = None,
    ) -> list[LengthPrediction]: ...


class LengthFeedback(Protocol):
    """Takes each served request's true length (online learning of the served model)."""

    def observe(self, model: str, prompt: PromptOrMessages | None, served_prediction: float,
                actual_per_choice: float, cap: int | None = None) -> None: ...
