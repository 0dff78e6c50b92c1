"""The CASTILLO paper's text-degeneration rule, applied to training rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Generation capped new tokens here; a completion this long ran into the cap.
GENERATION_CAP = 15_000
#: With std > 2 x mean, a row is degenerate when its longest completion exceeds this.
DEGENERATE_MAX = 8_499


@dataclass(frozen=True)
class CleaningReport:
    rows_in: int
    rows_removed: int
    removed_cap_hit: int
    removed_high_variance: int

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.rows_removed


def degenerate_mask(frame: pd.DataFrame, cap: float = GENERATION_CAP,
                    degenerate_max: float = DEGENERATE_MAX) -> tuple[np.ndarray, np.ndarray]:
    """(cap_hit, high_variance) masks: completions hit the cap, or std > 2 x mean with max > 8,499.

    ``cap`` and ``degenerate_max`` default to CASTILLO's generation; a profile run with
    another ``max_tokens`` passes its own (see ``predictor.profiling.degeneration``).
    """
    longest = np.array([float(np.max(s)) if len(s) else 0.0 for s in frame["output_sizes"]])
    cap_hit = longest >= cap
    std = frame["output_std"].to_numpy(dtype=float)
    mean = frame["output_mean"].to_numpy(dtype=float)
    high_variance = (std > 2.0 * mean) & (longest > degenerate_max)
    return cap_hit, high_variance


def remove_degenerate(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    cap_hit, high_variance = degenerate_mask(frame)
    drop = cap_hit | high_variance
    report = CleaningReport(
        rows_in=len(frame),
        rows_removed=int(drop.sum()),
        removed_cap_hit=int(cap_hit.sum()),
        removed_high_variance=int((high_variance & ~cap_hit).sum()),
    )
    return frame[~drop].reset_index(drop=True), report
