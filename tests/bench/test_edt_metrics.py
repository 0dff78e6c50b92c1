"""The evaluation's metrics behave as documented on small hand-made cases."""

from __future__ import annotations

import pytest

from lengthwise.bench.edt_metrics import rouge_l_f1, score_setting, self_bleu, tradeoff_score
from lengthwise.bench.edt_quality import build_grid, pareto_front


def test_self_bleu_is_100_for_identical_samples_and_lower_for_varied_ones():
    same = ["the cat sat on the mat today"] * 4
    varied = [
        "the cat sat on the mat today",
        "a dog ran across the wide field",
        "rain fell softly over the quiet town",
        "the cat slept on the warm mat",
    ]
    assert self_bleu(same) == pytest.approx(100.0)
    assert self_bleu(varied) < 30.0
    with pytest.raises(ValueError):
        self_bleu(["only one"])


def test_rouge_l_rewards_overlap_with_the_reference():
    ref = "Paris is the capital of France."
    assert rouge_l_f1(["Paris is the capital of France."], ref) == pytest.approx(1.0)
    assert rouge_l_f1(["Bananas are yellow."], ref) < rouge_l_f1(["The capital is Paris."], ref)


def test_tradeoff_is_a_harmonic_mean_of_quality_and_diversity():
    assert tradeoff_score(0.5, 50.0) == pytest.approx(0.5)
    assert tradeoff_score(0.0, 0.0) == 0.0
    assert tradeoff_score(0.2, 20.0) == pytest.approx(2 * 0.2 * 0.8 / 1.0)


def test_length_statistics_separate_overall_and_within_prompt_spread():
    scores = score_setting(
        [["a b", "a c"], ["x y", "x z"]],
        ["a b", "x y"],
        [[10, 10], [30, 30]],
        [[False, True], [False, False]],
    )
    assert scores.length_mean == 20.0
    assert scores.length_cv == pytest.approx(0.5)
    assert scores.within_prompt_length_cv == 0.0
    assert scores.truncated_fraction == 0.25


def test_pareto_front_keeps_only_undominated_settings():
    rows = [
        {"setting": "a", "rouge_l_f1": 0.3, "self_bleu": 50.0},
        {"setting": "b", "rouge_l_f1": 0.2, "self_bleu": 20.0},
        {"setting": "c", "rouge_l_f1": 0.2, "self_bleu": 60.0},  # beaten by a
    ]
    assert pareto_front(rows) == ["a", "b"]


def test_grid_rejects_invalid_edt_settings_before_sending():
    grid = build_grid([0.7], [1.0], [0.5], n=1.5)
    with pytest.raises(ValueError):
        grid[-1].request_extra()


def test_quality_above_the_fixed_curve_is_measured_at_equal_diversity():
    from lengthwise.bench.edt_quality import quality_above_fixed_curve

    rows = [
        {"setting": "fixed T=0.7", "kind": "fixed", "self_bleu": 20.0, "rouge_l_f1": 0.20},
        {"setting": "fixed T=1", "kind": "fixed", "self_bleu": 10.0, "rouge_l_f1": 0.10},
        {"setting": "above", "kind": "edt", "self_bleu": 15.0, "rouge_l_f1": 0.17},
        {"setting": "below", "kind": "edt", "self_bleu": 12.0, "rouge_l_f1": 0.10},
        {"setting": "outside", "kind": "edt", "self_bleu": 5.0, "rouge_l_f1": 0.30},
    ]
    gains = quality_above_fixed_curve(rows)
    assert gains["above"] == pytest.approx(0.02)   # the curve is at 0.15 there
    assert gains["below"] == pytest.approx(-0.02)  # the curve is at 0.12 there
    assert gains["outside"] is None
    assert set(gains) == {"above", "below", "outside"}
