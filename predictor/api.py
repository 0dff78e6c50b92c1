"""The predictor object the gateway and the simulator hold: load once, answer many.

``load_default_predictor()`` trains the default artifact if needed and loads it.
Thread-safe: all state is read-only after loading (LightGBM prediction and the
numpy/scipy feature code do not mutate shared objects).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightgbm
import numpy as np

from predictor.artifact import (
    ARTIFACT_VERSION,
    default_artifact_dir,
    ensure_trained,
    is_current,
    read_meta,
)
from predictor.capped_mean import capped_expectation
from predictor.errors import PredictorInputError
from predictor.model import OUTPUT_CAP, LengthModel
from predictor.prompt_text import feature_text
from predictor.types import LengthPrediction, PromptOrMessages

SAMPLING_KEYS = {"temperature", "top_p", "top_k", "min_p", "seed", "n", "presence_penalty",
                 "frequency_penalty", "repetition_penalty"}


def check_max_tokens(max_tokens) -> int | None:
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
        raise PredictorInputError(f"max_tokens must be an integer, got {max_tokens!r}")
    if max_tokens < 1:
        raise PredictorInputError(f"max_tokens must be at least 1, got {max_tokens}")
    return int(max_tokens)


def check_sampling(sampling) -> None:
    """Validates sampling settings.

    They are accepted but not model inputs: in CASTILLO each model was sampled
    with one fixed setting, so a learned effect would be the model's, not the
    setting's (see meta.json ``features``).
    """
    if sampling is None:
        return
    if not isinstance(sampling, Mapping):
        raise PredictorInputError("sampling must be an object of sampling settings")
    for key, value in sampling.items():
        if key in SAMPLING_KEYS and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PredictorInputError(f"sampling.{key} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise PredictorInputError(f"sampling.{key} must be finite")
    if float(sampling.get("temperature") or 0.0) < 0:
        raise PredictorInputError("sampling.temperature must be >= 0")
    top_p = sampling.get("top_p")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise PredictorInputError("sampling.top_p must be in (0, 1]")


def check_model(model) -> str:
    if not isinstance(model, str):
        raise PredictorInputError(f"model must be a string, got {type(model).__name__}")
    return model


class CastilloLengthPredictor:
    """Implements :class:`predictor.types.LengthPredictor` with a trained artifact."""

    def __init__(self, model: LengthModel, meta: dict | None = None):
        self._model = model
        self.meta = meta or {}

    @classmethod
    def from_directory(cls, directory: Path | str) -> CastilloLengthPredictor:
        directory = Path(directory)
        return cls(LengthModel.load(directory), read_meta(directory))

    @property
    def known_models(self) -> list[str]:
        return list(self._model.models)

    @property
    def version(self) -> str:
        return f"v{self.meta.get('artifact_version', '?')}-{self.meta.get('data', {}).get('fingerprint', '')[:12]}"

    def is_known_model(self, model: str) -> bool:
        return self._model.model_code(check_model(model)) is not None

    def predict(self, prompt: PromptOrMessages, model: str, max_tokens: int | None = None,
                sampling: dict | None = None) -> LengthPrediction:
        return self.predict_batch([prompt], [model], [max_tokens], [sampling])[0]

    def predict_batch(self, prompts: Sequence[PromptOrMessages], models: Sequence[str],
                      max_tokens: Sequence[int | None] | None = None,
                      samplings: Sequence[dict | None] | None = None) -> list[LengthPrediction]:
        return self.predict_batch_with_features(prompts, models, max_tokens, samplings)[0]

    def predict_batch_with_features(
        self, prompts: Sequence[PromptOrMessages], models: Sequence[str],
        max_tokens: Sequence[int | None] | None = None,
        samplings: Sequence[dict | None] | None = None,
    ) -> tuple[list[LengthPrediction], np.ndarray]:
        """``predict_batch``, and the text feature rows (lexical, n-gram topic and ridge
        scores) it computed on the way: what a calibrator on top may learn from, without
        featurizing each prompt twice."""
        if isinstance(prompts, (str, bytes)) or isinstance(models, (str, bytes)):
            raise PredictorInputError("predict_batch takes sequences of prompts and models")
        n = len(prompts)
        max_tokens = [None] * n if max_tokens is None else list(max_tokens)
        samplings = [None] * n if samplings is None else list(samplings)
        if not (len(models) == len(max_tokens) == len(samplings) == n):
            raise PredictorInputError("prompts, models, max_tokens and samplings differ in length")
        if n == 0:
            return [], np.zeros((0, len(self._model.featurizer.feature_names)), np.float32)
        texts = [feature_text(p) for p in prompts]
        names = [check_model(m) for m in models]
        caps = [check_max_tokens(m) for m in max_tokens]
        for sampling in samplings:
            check_sampling(sampling)
        features = self._model.featurize(texts)
        raw = self._model.predict_features(features, [self._model.model_code(m) for m in names])
        out = []
        for i, cap in enumerate(caps):
            limit = float(cap) if cap is not None else math.inf
            mean = float(raw.mean[i])
            if limit < OUTPUT_CAP:
                # the expected length of a capped request, E[min(Y, cap)]; at or above
                # CASTILLO's own cap the uncapped mean already is that figure
                mean = max(1.0, capped_expectation(mean, float(raw.p50[i]), float(raw.p90[i]),
                                                   limit))
            out.append(LengthPrediction(
                mean=float(min(mean, limit)),
                p50=float(min(raw.p50[i], limit)),
                p90=float(min(raw.p90[i], limit)),
                model_known=bool(raw.model_known[i]),
            ))
        return out, features


def load_default_predictor(source: Path | str | None = None,
                           directory: Path | str | None = None) -> CastilloLengthPredictor:
    """Trains the default artifact if it is missing or stale, then loads it (call once)."""
    return CastilloLengthPredictor.from_directory(
        ensure_trained(source, Path(directory) if directory else None))


class PredictorNotAvailable(RuntimeError):
    """No servable predictor artifact; the message says what to run."""


def load_served_predictor(directory: Path | str | None = None) -> CastilloLengthPredictor:
    """The predictor in ``directory``, served exactly as trained; it is never retrained
    (a folder trained on other data or without the hold-out stays what it is), and a folder
    that holds no artifact of this code version is refused.

    Without a directory, the default artifact in the cache folder is served; if it is
    missing or of an older version, it is trained from CASTILLO first (this needs the
    ``[train]`` extra; ``scripts/setup.sh`` does it ahead of time)."""
    if directory is not None:
        directory = Path(directory)
        meta = read_meta(directory)
        if not is_current(meta):
            found = "no meta.json" if meta is None else (
                f"artifact version {meta.get('artifact_version')!r}")
            raise PredictorNotAvailable(
                f"{directory} is not a predictor artifact of version {ARTIFACT_VERSION} "
                f"({found}); train one with `lengthwise predictor train --output {directory}`")
        try:
            return CastilloLengthPredictor.from_directory(directory)
        except (OSError, ValueError, KeyError, lightgbm.basic.LightGBMError) as exc:
            raise PredictorNotAvailable(
                f"{directory} holds an incomplete or unreadable predictor artifact ({exc}); "
                f"train one with `lengthwise predictor train --output {directory}`") from None
    default = default_artifact_dir()
    if not is_current(read_meta(default)):
        try:
            ensure_trained(None, default)
        except ImportError as exc:
            raise PredictorNotAvailable(
                f"no trained predictor in {default} and training needs the [train] extra "
                f"({exc.name} is missing): run `lengthwise predictor train` where it is "
                "installed, or pass --predictor-dir") from None
    return CastilloLengthPredictor.from_directory(default)
