import math

import numpy as np
import pandas as pd
import pytest

from lengthwise.common.rank import kendall_tau
from predictor.breakdown import (
    Scored,
    balanced,
    by_group,
    by_group_with_intervals,
    equal_share_weights,
)


def test_weighted_tau_equals_tau_of_repeated_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=40)
    a[5] = a[6]  # ties are handled as in tau-b
    weights = rng.integers(1, 4, size=40)
    repeated = np.repeat(np.arange(40), weights)
    assert kendall_tau(a, b, weights) == pytest.approx(kendall_tau(a[repeated], b[repeated]))
    assert kendall_tau(a, b, np.ones(40)) == pytest.approx(kendall_tau(a, b))
    assert math.isnan(kendall_tau(np.ones(5), b[:5], np.ones(5)))
    with pytest.raises(ValueError):
        kendall_tau(a, b, -np.ones(40))


def _scored(n, rng, bias=1.0):
    truth = rng.gamma(2.0, 100.0, size=n)
    samples = truth[:, None] * rng.uniform(0.5, 1.5, size=(n, 10))
    mean = truth * bias * rng.uniform(0.7, 1.3, size=n)
    return Scored(mean, mean * 1.5, truth, samples[:, 0], samples)


def test_balanced_figures_do_not_move_with_the_corpus_mix():
    rng = np.random.default_rng(1)
    a, b = _scored(200, rng), _scored(200, rng, bias=0.5)
    corpora = np.array(["A"] * 200 + ["B"] * 200)
    both = Scored(*(np.concatenate([x, y]) for x, y in zip(
        (a.mean, a.p90, a.truth, a.single, a.samples), (b.mean, b.p90, b.truth, b.single,
                                                         b.samples))))
    # four times corpus B's rows: the raw mix changes, the balanced figures do not
    idx = np.concatenate([np.arange(200), np.tile(np.arange(200, 400), 4)])
    skewed = both.subset(idx)
    first, second = balanced(both, corpora), balanced(skewed, corpora[idx])
    for key in ("kendall_tau_mean", "mae_tokens", "p90_coverage", "mean_predicted_over_true"):
        assert first[key] == pytest.approx(second[key])
    assert first["worst_mean_ratio_corpus"] == "B"
    groups = by_group(both, corpora)
    assert groups["B"]["mean_predicted_over_true"] == pytest.approx(0.5, abs=0.05)
    assert groups["A"]["rows"] == 200
    assert equal_share_weights(pd.Series(corpora[idx])).sum() == pytest.approx(1.0)


def test_mean_ratio_interval_resamples_prompts_and_narrows_with_more_of_them():
    rng = np.random.default_rng(2)
    scored = _scored(1300, rng, bias=0.9)
    corpora = np.array(["few"] * 130 + ["many"] * 1170)
    # 13 rows (models) per prompt: 10 prompts in "few", 90 in "many"
    prompts = np.repeat(np.arange(100), 13).astype(str)
    groups = by_group_with_intervals(scored, corpora, prompts)
    few, many = groups["few"], groups["many"]
    assert (few["prompts"], many["prompts"]) == (10, 90)
    for group in (few, many):
        low, high = group["mean_predicted_over_true_ci95"]
        assert low < group["mean_predicted_over_true"] < high
    width = {k: g["mean_predicted_over_true_ci95"][1] - g["mean_predicted_over_true_ci95"][0]
             for k, g in groups.items()}
    assert width["few"] > 2 * width["many"]  # ~sqrt(9) times wider with 9x fewer prompts
