"""The live benchmark's per-length breakdown, on hand-made arm results."""

from __future__ import annotations

import pytest

from lengthwise.bench.live import RequestResult, length_thirds


def _arm(e2e_by_index: dict[int, float], tokens_by_index: dict[int, int]) -> list[RequestResult]:
    return [RequestResult(index=i, ok=True, sent_at=0.0, e2e_s=e2e, ttft_s=None,
                          completion_tokens=tokens_by_index[i], prompt_tokens=10,
                          queue_wait_s=0.0, predicted_tokens=None)
            for i, e2e in e2e_by_index.items()]


def test_thirds_follow_the_reference_arms_lengths_and_score_every_arm_on_the_same_requests():
    tokens = {i: 10 * (i + 1) for i in range(9)}  # request 0 shortest, 8 longest
    fcfs = _arm({i: 50.0 for i in range(9)}, tokens)
    # sjf: short ones first (fast), long ones last (slow); its own lengths differ slightly
    sjf = _arm({i: 10.0 + 10.0 * i for i in range(9)}, {i: t + 1 for i, t in tokens.items()})
    direct = _arm({i: 60.0 for i in range(9)}, tokens)
    out = length_thirds({"vllm_direct": direct, "gateway_fcfs": fcfs, "gateway_sjf": sjf})
    assert out["shortest"]["requests"] == out["middle"]["requests"] == out["longest"]["requests"] == 3
    assert (out["shortest"]["tokens_min"], out["shortest"]["tokens_max"]) == (10, 30)
    assert out["shortest"]["gateway_sjf_e2e_mean_s"] == pytest.approx(20.0)
    assert out["shortest"]["sjf_over_fcfs"] == pytest.approx(0.4)
    assert out["longest"]["sjf_over_fcfs"] == pytest.approx(80.0 / 50.0)
    assert out["middle"]["vllm_direct_e2e_mean_s"] == pytest.approx(60.0)


def test_failed_requests_are_left_out():
    tokens = {i: i for i in range(6)}
    fcfs = _arm({i: 1.0 for i in range(6)}, tokens)
    fcfs[0].ok = False
    out = length_thirds({"gateway_fcfs": fcfs, "gateway_sjf": _arm({i: 2.0 for i in range(6)}, tokens)})
    assert sum(out[t]["requests"] for t in ("shortest", "middle", "longest")) == 5
