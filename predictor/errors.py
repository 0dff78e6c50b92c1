"""Typed errors at the predictor's boundary; the gateway maps ``PredictorInputError`` to HTTP 400."""

from __future__ import annotations


class PredictorInputError(ValueError):
    """The request cannot be scored as given (bad type, bad ``max_tokens``, bad sampling)."""


class CastilloDataError(RuntimeError):
    """CASTILLO rows could not be found or do not follow the public row schema."""
