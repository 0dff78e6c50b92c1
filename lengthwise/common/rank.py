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

#: rows per block of the weighted pair sums (block x n floats at a time)
_PAIR_BLOCK = 1024


def kendall_tau(predicted: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
                weights: Sequence[float] | np.ndarray | None = None) -> float:
    """Kendall's tau-b of ``predicted`` against ``actual``; NaN where it is undefined.

    ``weights``: one non-negative weight per row; a pair counts ``w_i * w_j``, so the figure
    is the tau-b of a population in which row i appears in proportion to ``w_i`` (e.g. each
    corpus reweighted to an equal share). Equal weights give the unweighted tau-b exactly.
    """
    a = np.asarray(predicted, dtype=float)
    b = np.asarray(actual, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"predicted and actual differ in length: {a.shape} vs {b.shape}")
    if a.size < 2:
        return math.nan
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != a.shape or (w < 0).any():
            raise ValueError("weights must be one non-negative number per row")
        return _weighted_tau_b(a, b, w)
    from scipy.stats import kendalltau

    with warnings.catch_warnings():
        # A constant side makes tau undefined; scipy warns and returns NaN, which is the answer.
        warnings.simplefilter("ignore")
        value = kendalltau(a, b).statistic
    return float(value) if value is not None and math.isfinite(value) else math.nan


def _weighted_tau_b(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    # scipy has no per-row weights (its weightedtau weighs by rank), so the pair sums are
    # done in blocks; each pair is counted twice in all three sums, which cancels.
    concordance = untied_a = untied_b = 0.0
    for start in range(0, a.size, _PAIR_BLOCK):
        stop = start + _PAIR_BLOCK
        sign_a = np.sign(a[start:stop, None] - a[None, :])
        sign_b = np.sign(b[start:stop, None] - b[None, :])
        pair_w = w[start:stop, None] * w[None, :]
        concordance += float(np.sum(pair_w * sign_a * sign_b))
        untied_a += float(np.sum(pair_w * (sign_a != 0)))
        untied_b += float(np.sum(pair_w * (sign_b != 0)))
    if untied_a <= 0 or untied_b <= 0:
        return math.nan
    return concordance / math.sqrt(untied_a * untied_b)


def finite_or_none(value: float) -> float | None:
    """A figure for a JSON report: NaN (undefined) becomes null."""
    return value if math.isfinite(value) else None
