"""CASTILLO's degeneration rule, scaled to a profile run's ``max_tokens`` cap, and a text check.

CASTILLO generated up to 15,000 new tokens and flags a row whose completions hit
that cap, or whose std > 2 x mean with the longest completion above 8,499 tokens
(57% of the cap). A profile run caps at its own ``max_tokens``, so both thresholds
are scaled to it: the cap is ``max_tokens`` itself (a completion that stopped for
length), and the long-completion threshold is ``max_tokens * 8,499 / 15,000``.

At a short cap the length rule cannot tell a long answer from a runaway one: both
stop at the cap. :func:`loops` looks at the text instead (the repetition that
CASTILLO's paper describes for degenerate outputs), so a report can give both.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from predictor.cleaning import DEGENERATE_MAX, GENERATION_CAP, degenerate_mask


def scaled_threshold(max_tokens: int) -> float:
    return max_tokens * DEGENERATE_MAX / GENERATION_CAP


def flag_degenerate(frame: pd.DataFrame, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(cap_hit, high_variance) masks under the scaled rule (same code as training-data cleaning)."""
    return degenerate_mask(frame, cap=max_tokens, degenerate_max=scaled_threshold(max_tokens))


def row_degeneration(output_sizes: list[int], max_tokens: int) -> str | None:
    """``"cap_hit"``, ``"high_variance"`` or None for one row's sampled lengths."""
    sizes = np.asarray(output_sizes, dtype=float)
    frame = pd.DataFrame({"output_sizes": [sizes], "output_mean": [float(sizes.mean())],
                          "output_std": [float(sizes.std())]})
    cap_hit, high_variance = flag_degenerate(frame, max_tokens)
    if cap_hit[0]:
        return "cap_hit"
    if high_variance[0]:
        return "high_variance"
    return None


#: words in the tail that :func:`loops` inspects
LOOP_TAIL_WORDS = 60
#: a tail whose word 3-grams are this repetitive (distinct / total) is looping
LOOP_DISTINCT_SHARE = 0.5
#: enough characters for 60 words of prose; long texts are not scanned whole
LOOP_TAIL_CHARS = 1500
_WORD = re.compile(r"\S+")


def loops(text: str) -> bool:
    """True when the text's tail repeats itself: under half of its word 3-grams are distinct.

    Normal prose (and code) rarely repeats a 3-gram within 60 words; a model caught in a
    loop ("the the the", a list item or a line of code over and over) does so constantly.
    """
    words = _WORD.findall(text[-LOOP_TAIL_CHARS:])[-LOOP_TAIL_WORDS:]
    if len(words) < 12:
        return False
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) < LOOP_DISTINCT_SHARE
