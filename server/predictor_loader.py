"""Where the gateway gets its length predictor: the predictor package's trained artifact."""

from __future__ import annotations

from pathlib import Path

from predictor.types import LengthPredictor


def load_length_predictor(directory: Path | None = None) -> LengthPredictor:
    """Load the trained predictor from ``directory`` (default: the package's cache folder),
    training it from CASTILLO first if it is missing or stale."""
    from predictor.api import load_default_predictor

    return load_default_predictor(directory=directory)
