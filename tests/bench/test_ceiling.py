"""The ordering ceiling (lengthwise/bench/ceiling.py): rankings of rising knowledge, replayed."""

from __future__ import annotations

import random

import pytest
from sim_helpers import STEP_MODEL

from lengthwise.bench.ceiling import (
    PromptSamples,
    burst_requests,
    ordering_ceiling,
    share_of_variance_between_prompts,
)
from server.policy import EngineQueueMode
from simulator.fidelity import LiveSetup
from simulator.replica import EngineConfig


def _setup(admission: int) -> LiveSetup:
    engine = EngineConfig(8, 512, 16384, 16, EngineQueueMode.FCFS)
    return LiveSetup(engine=engine, max_model_len=512, admission_max_sequences=admission,
                     aging_s_per_token=0.05)


def _prompts(n: int, answers: int, spread: int, predicted, seed: int = 3) -> list[PromptSamples]:
    """Prompts whose answers scatter by ``spread`` tokens around a per-prompt mean."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        mean = rng.randint(20, 200)
        lengths = tuple(max(1, mean + rng.randint(-spread, spread)) for _ in range(answers))
        out.append(PromptSamples(rng.randint(5, 40), lengths, float(predicted(mean))))
    return out


def _ratios(report: dict, part: str = "bench_burst") -> dict[str, float]:
    return report[part]["rows"][0]["e2e_mean_over_fcfs"]


def test_the_prompt_mean_leaves_the_ranked_answer_out():
    [first, second, third] = burst_requests([PromptSamples(10, (10, 20, 60), 5.0)], [0, 1, 2])
    assert first.ranking == {"predictor": 5.0, "prompt_mean": 40.0, "oracle": 10.0}
    assert second.ranking["prompt_mean"] == 35.0
    assert third.ranking["prompt_mean"] == 15.0


def test_one_answer_per_prompt_is_refused():
    with pytest.raises(ValueError, match="at least two answers"):
        burst_requests([PromptSamples(10, (10,), 5.0)], [0])


def test_when_a_prompt_always_answers_alike_its_mean_is_as_good_as_the_oracle():
    prompts = _prompts(40, answers=3, spread=0, predicted=lambda mean: mean)
    report = ordering_ceiling(prompts, 256, _setup(admission=2), STEP_MODEL, [2], shuffle_seed=1)

    ratios = _ratios(report)
    assert ratios["fcfs"] == 1.0
    assert ratios["sjf_prompt_mean"] == pytest.approx(ratios["sjf_oracle"])
    assert ratios["sjf_oracle"] < 0.8
    assert report["bench_burst"]["kendall_tau_vs_answer"]["prompt_mean"] == pytest.approx(1.0)
    assert report["lengths"]["share_of_variance_between_prompts"] == pytest.approx(1.0)


def test_rankings_line_up_by_what_they_know():
    # The predictor knows the prompt's mean only roughly; answers scatter around it.
    noise = random.Random(7)
    prompts = _prompts(60, answers=4, spread=40,
                       predicted=lambda mean: mean * noise.uniform(0.3, 3.0))
    report = ordering_ceiling(prompts, 256, _setup(admission=2), STEP_MODEL, [2, 4],
                              shuffle_seed=1)

    for part in ("bench_burst", "every_answer_burst"):
        ratios = _ratios(report, part)
        assert ratios["sjf_oracle"] < ratios["sjf_prompt_mean"] < ratios["sjf_predictor"] < 1.0
        taus = report[part]["kendall_tau_vs_answer"]
        assert 0.0 < taus["predictor"] < taus["prompt_mean"] < 1.0
    assert report["every_answer_burst"]["requests"] == 240
    assert [r["admission_max_sequences"] for r in report["bench_burst"]["rows"]] == [2, 4]
    assert 0.0 < report["lengths"]["share_of_variance_between_prompts"] < 1.0


def test_a_ranking_that_puts_long_answers_first_does_worse_than_arrival_order():
    prompts = _prompts(40, answers=2, spread=0, predicted=lambda mean: 1000.0 - mean)
    report = ordering_ceiling(prompts, 256, _setup(admission=2), STEP_MODEL, [2], shuffle_seed=1)
    assert _ratios(report)["sjf_predictor"] > 1.1


def test_the_share_of_variance_is_zero_when_every_prompt_answers_the_same_spread():
    prompts = [PromptSamples(10, (10, 50, 90), 1.0), PromptSamples(10, (90, 10, 50), 1.0)]
    assert share_of_variance_between_prompts(prompts) == pytest.approx(0.0)


def test_fewer_known_answers_take_the_next_ones_round_the_prompt():
    prompt = PromptSamples(10, (10, 20, 60), 5.0)
    [first, last] = burst_requests([prompt], [0, 2], known=1)
    assert first.ranking["prompt_mean"] == 20.0
    assert last.ranking["prompt_mean"] == 10.0
    with pytest.raises(ValueError, match="between 1 and 2"):
        burst_requests([prompt], [0], known=3)


def test_every_answer_set_is_replayed_and_the_prompt_mean_converges():
    prompts = _prompts(30, answers=4, spread=0, predicted=lambda mean: 100.0)
    sets = ordering_ceiling(prompts, 256, _setup(admission=2), STEP_MODEL, [2],
                            shuffle_seed=1)["bench_burst_by_answer_set"]
    assert sets["answer_sets"] == 4
    # Answers that never vary make one known answer as good as all of them.
    known = sets["prompt_mean_by_answers_known"]
    assert [row["answers_known"] for row in known] == [1, 2, 3]
    assert known[0]["sjf_prompt_mean_over_fcfs"] == pytest.approx(
        sets["e2e_mean_over_fcfs"]["sjf_oracle"]["mean"])
    # A constant prediction leaves the queue in arrival order.
    assert sets["e2e_mean_over_fcfs"]["sjf_predictor"]["max"] == pytest.approx(1.0)
