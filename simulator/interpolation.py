"""Interpolation on the profiler's grids: 1-D tables and sparse multi-axis grids."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass


def _bracket(keys: list[float], x: float) -> tuple[int, int, float]:
    """Indices ``(lo, hi)`` and the weight of ``hi`` for linear interpolation.

    Below the first key the value is held flat (tables start at their smallest
    meaningful size); above the last key it is extrapolated linearly from the
    last two keys, because batches larger than the profiled grid do occur.
    """
    n = len(keys)
    if n == 1 or x <= keys[0]:
        return 0, 0, 0.0
    if x >= keys[-1]:
        lo, hi = n - 2, n - 1
    else:
        hi = bisect.bisect_right(keys, x)
        lo = hi - 1
    k0, k1 = keys[lo], keys[hi]
    return lo, hi, (x - k0) / (k1 - k0)


@dataclass(frozen=True, slots=True)
class Table1D:
    xs: list[float]
    ys: list[float]

    def __call__(self, x: float) -> float:
        lo, hi, w = _bracket(self.xs, x)
        ys = self.ys
        return ys[lo] + (ys[hi] - ys[lo]) * w


class NestedTable:
    """Interpolates a sparse grid over several axes, one axis at a time.

    The profiler's attention grid is not rectangular: it is the union of a
    power-of-two grid and a 1.5x "skew" grid, and which ``(n_decode,
    kv_decode)`` points exist depends on ``(prefill_chunk, kv_prefill)``. So we
    bracket the first axis among its values, then bracket the next axis among
    the values that exist under each bracketing point, and so on (recursive
    multilinear interpolation).
    """

    def __init__(self, points: dict[tuple[float, ...], float]) -> None:
        if not points:
            raise ValueError("empty table")
        self.depth = len(next(iter(points)))
        self._root = self._build(list(points.items()), 0)

    def _build(self, items: list[tuple[tuple[float, ...], float]], axis: int):
        if axis == self.depth - 1:
            items = sorted((k[axis], v) for k, v in items)
            return Table1D([k for k, _ in items], [v for _, v in items])
        groups: dict[float, list] = defaultdict(list)
        for k, v in items:
            groups[k[axis]].append((k, v))
        keys = sorted(groups)
        return (keys, [self._build(groups[k], axis + 1) for k in keys])

    def __call__(self, *x: float) -> float:
        return self._eval(self._root, x, 0)

    def _eval(self, node, x: tuple[float, ...], axis: int) -> float:
        if axis == self.depth - 1:
            return node(x[axis])
        keys, children = node
        lo, hi, w = _bracket(keys, x[axis])
        v0 = self._eval(children[lo], x, axis + 1)
        if w == 0.0:
            return v0
        v1 = self._eval(children[hi], x, axis + 1)
        return v0 + (v1 - v0) * w
