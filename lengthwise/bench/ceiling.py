"""How much shortest-predicted-first can buy on a workload, for predictors of rising knowledge.

Given several sampled answers per prompt (``PromptSamples``), each answer becomes one
request of a burst, ranked three ways:

- ``predictor``: the value the gateway's predictor gave the prompt;
- ``prompt_mean``: the mean length of the prompt's *other* answers (leave one out). A
  predictor sees only the request, and the same request can be answered at many lengths.
  Ranking by the true mean is shortest-expected-processing-time first, the best ranking
  from the request alone in expectation on one server (near it on several slots); this
  estimates it;
- ``oracle``: the length of the very answer (not reachable by any predictor).

Each ranking is replayed through the simulator (the gateway's policy module and the
calibrated engine model) under ``sjf-aged``, beside ``fcfs``; mean E2E is reported
relative to ``fcfs`` at the same gateway admission limit.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lengthwise.common.rank import kendall_tau
from server.policy import PolicyName
from simulator.fidelity import ArmReplay, LiveSetup, replay_arms
from simulator.latency import StepLatencyModel
from simulator.trace import SimRequest

RANKINGS = ("predictor", "prompt_mean", "oracle")
_BURST_SPACING_S = 1e-6


@dataclass(frozen=True)
class PromptSamples:
    """Several sampled answer lengths for one prompt, and the predictor's value for it."""

    prompt_tokens: int
    lengths: tuple[int, ...]
    predicted: float


@dataclass(frozen=True)
class RankedRequest:
    prompt_tokens: int
    length: int
    #: ranking source -> the value the scheduler ranks by
    ranking: dict[str, float]


def burst_requests(
    prompts: Sequence[PromptSamples], answers: Sequence[int], known: int | None = None
) -> list[RankedRequest]:
    """One request per prompt and answer index in ``answers``, with each ranking's value.

    ``prompt_mean`` averages ``known`` of the prompt's other answers (default: all), taken
    cyclically after the ranked one, so fewer known answers show how the estimate converges.
    """
    out = []
    for p in prompts:
        count = len(p.lengths)
        if count < 2:
            raise ValueError("every prompt needs at least two answers (the mean leaves one out)")
        m = count - 1 if known is None else known
        if not 1 <= m < count:
            raise ValueError(f"known must be between 1 and {count - 1}")
        for k in answers:
            others = [p.lengths[(k + j) % count] for j in range(1, m + 1)]
            out.append(RankedRequest(p.prompt_tokens, p.lengths[k], {
                "predictor": p.predicted,
                "prompt_mean": statistics.fmean(others),
                "oracle": float(p.lengths[k]),
            }))
    return out


def kendall_tau_vs_answer(requests: Sequence[RankedRequest]) -> dict[str, float]:
    """How well each request-only ranking orders the answers actually drawn."""
    actual = [r.length for r in requests]
    return {src: kendall_tau([r.ranking[src] for r in requests], actual)
            for src in ("predictor", "prompt_mean")}


def share_of_variance_between_prompts(prompts: Sequence[PromptSamples]) -> float:
    """How much of the answers' length variance is explained by which prompt was asked."""
    total = statistics.pvariance([x for p in prompts for x in p.lengths])
    within = statistics.fmean(statistics.pvariance(p.lengths) for p in prompts)
    return 1.0 - within / total if total else 0.0


def _sim_requests(requests: Sequence[RankedRequest]) -> list[SimRequest]:
    return [SimRequest(request_id=f"r{i}", arrival_time=i * _BURST_SPACING_S,
                       prompt_tokens=r.prompt_tokens, output_tokens=max(1, r.length))
            for i, r in enumerate(requests)]


def _replay(
    requests: Sequence[RankedRequest], rankings: Sequence[str], setup: LiveSetup,
    latency: StepLatencyModel, admission: int | None, with_fcfs: bool = True,
) -> dict[str, ArmReplay]:
    """fcfs (optionally) and sjf-aged by each named ranking, at one admission limit."""
    arms = {"fcfs": (PolicyName.FCFS, [0.0] * len(requests))} if with_fcfs else {}
    for src in rankings:
        arms[f"sjf_{src}"] = (PolicyName.SJF_AGED, [r.ranking[src] for r in requests])
    replays = replay_arms(_sim_requests(requests), arms,
                          replace(setup, admission_max_sequences=admission), latency)
    for name, replay in replays.items():
        if replay.finished != len(requests):
            raise RuntimeError(f"{name}: {len(requests) - replay.finished} requests dropped "
                               "(longer than the engine's max_model_len?)")
    return replays


def replay_burst(
    requests: Sequence[RankedRequest],
    setup: LiveSetup,
    latency: StepLatencyModel,
    admissions: Sequence[int | None],
) -> list[dict]:
    """Mean E2E and makespan of one burst under fcfs and sjf-aged with each ranking."""
    rows = []
    for admission in admissions:
        replays = _replay(requests, RANKINGS, setup, latency, admission)
        fcfs = replays["fcfs"].e2e_mean_s
        rows.append({
            "admission_max_sequences": admission,
            "e2e_mean_s": {k: v.e2e_mean_s for k, v in replays.items()},
            "makespan_s": {k: v.makespan_s for k, v in replays.items()},
            "e2e_mean_over_fcfs": {k: v.e2e_mean_s / fcfs for k, v in replays.items()},
        })
    return rows


def _ratio_summary(ratios: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {name: {"mean": statistics.fmean(r[name] for r in ratios),
                   "min": min(r[name] for r in ratios), "max": max(r[name] for r in ratios)}
            for name in ratios[0]}


def by_answer_set(
    prompts: Sequence[PromptSamples],
    setup: LiveSetup,
    latency: StepLatencyModel,
    admission: int | None,
) -> dict:
    """The bench's burst once per answer set (answer k of every prompt): how much one
    96-request burst's result moves with the answers drawn alone, and how the prompt-mean
    ranking improves as more of the prompt's other answers are known."""
    count = len(prompts[0].lengths)
    per_set = [replay_burst(burst_requests(prompts, [k]), setup, latency, [admission])[0]
               for k in range(count)]
    converging = []
    for m in range(1, count):
        ratios, taus = [], []
        for k, row in enumerate(per_set):
            burst = burst_requests(prompts, [k], known=m)
            # fcfs and the other rankings do not depend on m: only this arm is replayed
            mean = _replay(burst, ["prompt_mean"], setup, latency, admission,
                           with_fcfs=False)["sjf_prompt_mean"].e2e_mean_s
            ratios.append(mean / row["e2e_mean_s"]["fcfs"])
            taus.append(kendall_tau_vs_answer(burst)["prompt_mean"])
        converging.append({"answers_known": m, "sjf_prompt_mean_over_fcfs": statistics.fmean(ratios),
                           "kendall_tau": statistics.fmean(taus)})
    return {
        "admission_max_sequences": admission,
        "answer_sets": count,
        "e2e_mean_over_fcfs": _ratio_summary([row["e2e_mean_over_fcfs"] for row in per_set]),
        "prompt_mean_by_answers_known": converging,
    }


def ordering_ceiling(
    prompts: Sequence[PromptSamples],
    max_tokens: int | None,
    setup: LiveSetup,
    latency: StepLatencyModel,
    admissions: Sequence[int | None],
    shuffle_seed: int,
) -> dict:
    """The report: the bench's own burst (answer 0 of each prompt) at every admission
    limit; one larger burst of every answer (shuffled) at the first limit; and, at the
    first limit, the bench's burst over every answer set (see ``by_answer_set``)."""
    if not prompts:
        raise ValueError("no prompts")
    lengths = [x for p in prompts for x in p.lengths]
    bench_burst = burst_requests(prompts, [0])
    every_answer = burst_requests(prompts, range(len(prompts[0].lengths)))
    random.Random(shuffle_seed).shuffle(every_answer)
    return {
        "lengths": {
            "answers": len(lengths),
            "mean": statistics.fmean(lengths),
            "cap_hit_rate": (None if max_tokens is None
                             else sum(x >= max_tokens for x in lengths) / len(lengths)),
            "share_of_variance_between_prompts": share_of_variance_between_prompts(prompts),
        },
        "bench_burst": {
            "requests": len(bench_burst),
            "kendall_tau_vs_answer": kendall_tau_vs_answer(bench_burst),
            "rows": replay_burst(bench_burst, setup, latency, admissions),
        },
        "every_answer_burst": {
            "requests": len(every_answer),
            "kendall_tau_vs_answer": kendall_tau_vs_answer(every_answer),
            "rows": replay_burst(every_answer, setup, latency, list(admissions)[:1]),
        },
        "bench_burst_by_answer_set": by_answer_set(prompts, setup, latency, admissions[0]),
    }
