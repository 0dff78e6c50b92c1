"""Rank agreement between predicted and true lengths: the one Kendall tau of the project.

A queue consumes the order of its predictions, not their values, so every figure of a
predictor's quality for scheduling is a rank correlation. Undefined cases (fewer than two
pairs, or one side constant) are NaN, never an exception or a silent zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np


def kendall_tau(predicted: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
                ) -> float:
    """Kendall's tau-b of ``predicted`` against ``actual``; NaN where it is undefined."""
    from scipy.stats import kendalltau

    a = np.asarray(predicted, dtype=float)
    b = np.asarray(actual, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"predicted and actual differ in length: {a.shape} vs {b.shape}")
    if a.size < 2:
        return math.nan
    with warnings.catch_warnings():
        # A constant side makes tau undefined; scipy warns and returns NaN, which is the answer.
        warnings.simplefilter("ignore")
        value = kendalltau(a, b).statistic
    return float(value) if value is not None and math.isfinite(value) else math.nan


def finite_or_none(value: float) -> float | None:
    """A figure for a JSON report: NaN (undefined) becomes null."""
    return value if math.isfinite(value) else None
