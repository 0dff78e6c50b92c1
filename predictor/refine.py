"""The optional second stage: a slower, better prediction for requests still in the queue.

The arrival-time prediction (:class:`predictor.api.CastilloLengthPredictor`) stays on
the request path. A request that waits can afford more: this stage adds the packaged
MiniLM sentence embedding (``embeddings`` extra) to the first stage's features and
scores them with LightGBM heads trained the same way (mean, p50, p90). It is meant
to be called in batches, off the request path, by whoever holds the queue.

It lives in ``<artifact>/second_stage/``, trained by ``lengthwise predictor
train-second-stage`` on the same rows as the artifact beside it. It is optional twice
over: the folder may be absent, and the gateway may run without the embeddings
extra; :func:`load_second_stage` then answers None and nothing else changes.

Like the first stage, it holds model-aware and model-agnostic heads: a model name it
does not know is answered by the agnostic heads (``model_known`` False).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from predictor.api import CastilloLengthPredictor
from predictor.artifact import default_artifact_dir, is_current, read_meta
from predictor.types import LengthPrediction, PromptOrMessages

SECOND_STAGE_DIR = "second_stage"


class SecondStageUnavailable(RuntimeError):
    """No trained second stage here, or the embeddings extra is not installed."""


def second_stage_dir(artifact: Path | str | None = None) -> Path:
    return Path(artifact or default_artifact_dir()) / SECOND_STAGE_DIR


class SecondStage:
    """``refine_batch`` of queued requests: MiniLM embedding + LightGBM, one batch at a time."""

    def __init__(self, refined: CastilloLengthPredictor):
        self._refined = refined

    @classmethod
    def load(cls, artifact: Path | str | None = None) -> SecondStage:
        directory = second_stage_dir(artifact)
        if not is_current(read_meta(directory)):
            raise SecondStageUnavailable(
                f"no second stage of this version in {directory}; train it with "
                "`lengthwise predictor train-second-stage`")
        try:
            return cls(CastilloLengthPredictor.from_directory(directory))
        except RuntimeError as exc:  # MiniLMEncoder: the embeddings extra is missing
            raise SecondStageUnavailable(str(exc)) from exc

    @property
    def meta(self) -> dict:
        return self._refined.meta

    def refine_batch(self, prompts: Sequence[PromptOrMessages], models: Sequence[str],
                     max_tokens: Sequence[int | None] | None = None) -> list[LengthPrediction]:
        """Refined predictions, in order, capped like the first stage's.

        One call embeds the whole batch (the embedding is what costs): batch the
        requests that are queued rather than calling once per request.
        """
        return self._refined.predict_batch(prompts, models, max_tokens)


def load_second_stage(artifact: Path | str | None = None) -> SecondStage | None:
    """The second stage beside ``artifact`` (default: the default artifact), or None."""
    try:
        return SecondStage.load(artifact)
    except SecondStageUnavailable:
        return None
