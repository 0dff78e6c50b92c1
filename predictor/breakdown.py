"""Figures per corpus and per model, and pooled figures with every corpus weighted equally.

The pooled figures of a split move with its corpus mix (a split with four times the
ShareGPT share scores lower with the same predictor), so reports also give the
corpus-balanced pooled figure: each corpus weighs 1/K of the rows, a pair of rows
``w_i * w_j`` in the Kendall tau. The corpus label is read here, for evaluation only;
predictions never see it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from lengthwise.common.rank import finite_or_none, kendall_tau


@dataclass(frozen=True)
class GroupFigures:
    rows: int
    kendall_tau_mean: float | None
    kendall_tau_single: float | None
    mae_tokens: float
    #: sum of predicted means / sum of true means: 1 is an unbiased mean
    mean_predicted_over_true: float
    p90_coverage: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scored:
    """What one evaluation scored: per-row predictions beside the truth (all row-aligned)."""

    mean: np.ndarray
    p90: np.ndarray
    truth: np.ndarray
    single: np.ndarray
    samples: np.ndarray

    def subset(self, mask: np.ndarray) -> Scored:
        return Scored(self.mean[mask], self.p90[mask], self.truth[mask], self.single[mask],
                      self.samples[mask])


def figures(scored: Scored, weights: np.ndarray | None = None) -> GroupFigures:
    """Figures of the rows, each row counting ``weights[i]`` (equal by default)."""
    w = np.ones(len(scored.truth)) if weights is None else np.asarray(weights, float)
    covered = np.mean(scored.samples <= scored.p90[:, None], axis=1)
    return GroupFigures(
        rows=len(scored.truth),
        kendall_tau_mean=finite_or_none(kendall_tau(scored.mean, scored.truth, w)),
        kendall_tau_single=finite_or_none(kendall_tau(scored.mean, scored.single, w)),
        mae_tokens=float(np.average(np.abs(scored.mean - scored.truth), weights=w)),
        mean_predicted_over_true=float(np.sum(w * scored.mean) / max(np.sum(w * scored.truth),
                                                                      1e-9)),
        p90_coverage=float(np.average(covered, weights=w)),
    )


def equal_share_weights(labels: pd.Series | np.ndarray) -> np.ndarray:
    """Row weights giving every label the same total weight (1/K each)."""
    codes, uniques = pd.factorize(np.asarray(labels))
    counts = np.bincount(codes)
    return 1.0 / (len(uniques) * counts[codes])


def by_group(scored: Scored, labels: pd.Series | np.ndarray) -> dict[str, dict]:
    labels = np.asarray(labels)
    return {str(label): figures(scored.subset(labels == label)).to_dict()
            for label in sorted(set(labels.tolist()))}


def mean_ratio_interval(scored: Scored, prompt_ids: np.ndarray, resamples: int = 2000,
                        seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Bootstrap interval of ``mean_predicted_over_true`` over prompts.

    Rows of one prompt (one per model) are not independent draws, so whole prompts are
    resampled: a corpus with 65 test prompts pins its ratio down far less than its 640
    rows suggest."""
    codes, uniques = pd.factorize(np.asarray(prompt_ids))
    if len(uniques) < 2:
        return None
    predicted = np.bincount(codes, weights=scored.mean)
    true = np.bincount(codes, weights=scored.truth)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(uniques), size=(resamples, len(uniques)))
    ratios = predicted[picks].sum(axis=1) / np.maximum(true[picks].sum(axis=1), 1e-9)
    tail = (1 - level) / 2
    return [float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))]


def by_group_with_intervals(scored: Scored, labels: pd.Series | np.ndarray,
                            prompt_ids: pd.Series | np.ndarray) -> dict[str, dict]:
    """:func:`by_group`, each group with its prompt-bootstrap 95 % interval of the mean ratio."""
    labels, prompt_ids = np.asarray(labels), np.asarray(prompt_ids)
    groups = by_group(scored, labels)
    for label, group in groups.items():
        mask = labels == label
        group["mean_predicted_over_true_ci95"] = mean_ratio_interval(
            scored.subset(mask), prompt_ids[mask])
        group["prompts"] = len(set(prompt_ids[mask].tolist()))
    return groups


def balanced(scored: Scored, corpora: pd.Series | np.ndarray) -> dict:
    """Pooled figures with each corpus reweighted to an equal share, and the corpus whose
    mean is furthest from unbiased."""
    pooled = figures(scored, equal_share_weights(corpora)).to_dict()
    ratios = {k: v["mean_predicted_over_true"] for k, v in by_group(scored, corpora).items()}
    worst = max(ratios, key=lambda k: abs(math.log(max(ratios[k], 1e-9))))
    pooled.update({"corpora": len(ratios), "worst_mean_ratio_corpus": worst,
                   "worst_mean_ratio": ratios[worst]})
    return pooled
