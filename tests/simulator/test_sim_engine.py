"""The vLLM-like engine's step structure, checked on cases small enough to do by hand."""

from __future__ import annotations

import pytest
from sim_helpers import config, constant_steps

from server.policy import EngineQueueMode, PolicyName
from simulator.simulation import run_simulation
from simulator.trace import SimRequest


def _one(prompt: int, output: int, budget: int = 2048, step: float = 0.01):
    req = [SimRequest("a", 0.0, prompt, output)]
    cfg = config(max_num_batched_tokens=budget, kv_cache_tokens=16 * 1024)
    res = run_simulation(req, [1.0], cfg, constant_steps(step))
    return res, res.records[0].seq


def test_prefill_then_one_token_per_step():
    res, seq = _one(prompt=100, output=5)
    # step 1 prefills all 100 tokens and samples token 1; 4 decode steps follow
    assert seq.first_token == pytest.approx(0.01)
    assert seq.finished == pytest.approx(0.05)
    assert res.replicas[0].num_steps == 5


def test_chunked_prefill_spreads_a_long_prompt_over_steps():
    res, seq = _one(prompt=5000, output=2, budget=2048)
    # ceil(5000 / 2048) = 3 prefill steps before the first token
    assert seq.first_token == pytest.approx(0.03)
    assert seq.finished == pytest.approx(0.04)
    tokens = [s.num_scheduled_tokens for s in res.replicas[0].steps]
    assert tokens == [2048, 2048, 904, 1]


def test_running_requests_are_served_before_waiting_ones():
    # b arrives while a is mid-prefill: a's remaining chunk comes first in the step
    reqs = [SimRequest("a", 0.0, 100, 3), SimRequest("b", 0.005, 100, 3)]
    res = run_simulation(reqs, [1.0, 1.0], config(max_num_batched_tokens=64,
                                                  kv_cache_tokens=4096), constant_steps())
    a, b = (r.seq for r in res.records)
    assert a.first_token < b.first_token
    steps = res.replicas[0].steps
    assert all(s.num_scheduled_tokens <= 64 for s in steps)


def test_max_num_seqs_caps_the_running_batch():
    reqs = [SimRequest(f"r{i}", 0.0, 4, 20) for i in range(10)]
    res = run_simulation(reqs, [1.0] * 10, config(max_num_seqs=3, kv_cache_tokens=4096),
                         constant_steps())
    assert max(s.num_running for s in res.replicas[0].steps) == 3
    assert res.gateway.completed == 10


def test_request_larger_than_kv_is_dropped_not_hung():
    reqs = [SimRequest("big", 0.0, 600, 10), SimRequest("ok", 0.0, 10, 10)]
    res = run_simulation(reqs, [1.0, 1.0], config(kv_cache_tokens=512), constant_steps())
    assert res.records[0].dropped
    assert res.records[1].seq.finished is not None
    assert res.gateway.dropped == 1 and res.gateway.completed == 1


@pytest.mark.parametrize("mode", list(EngineQueueMode))
def test_priority_queue_orders_waiting_requests(mode):
    # Three requests wait behind a running one; the SJF policy's rank reaches
    # the engine as priority, which only a priority-mode engine honours.
    reqs = [SimRequest("first", 0.0, 8, 30)] + [
        SimRequest(name, 0.001, 8, out) for name, out in (("long", 40), ("mid", 20), ("short", 5))
    ]
    preds = [30.0, 40.0, 20.0, 5.0]
    cfg = config(policy=PolicyName.SJF, mode=mode, max_num_seqs=1, kv_cache_tokens=4096)
    res = run_simulation(reqs, preds, cfg, constant_steps())
    order = sorted(res.records[1:], key=lambda r: r.seq.first_scheduled)
    names = [r.request.request_id for r in order]
    if mode == EngineQueueMode.PRIORITY:
        assert names == ["short", "mid", "long"]
    else:
        assert names == ["long", "mid", "short"]  # dispatch order = arrival order


@pytest.mark.parametrize("mode", list(EngineQueueMode))
def test_fast_forward_is_exact(mode):
    # Steady decode stretches are advanced in one pass; every timestamp,
    # preemption and step must match stepping one by one.
    from dataclasses import replace

    from sim_helpers import STEP_MODEL, synthetic

    reqs = synthetic(300, seed=5, rate=15.0, max_output=200)
    preds = [float(r.output_tokens) for r in reqs]
    cfg = config(policy=PolicyName.SJF, mode=mode, workers=2, kv_cache_tokens=640,
                 max_num_batched_tokens=128)
    fast = run_simulation(reqs, preds, cfg, STEP_MODEL)
    slow = run_simulation(reqs, preds, replace(cfg, fast_forward=False), STEP_MODEL)
    assert fast.events < slow.events  # the shortcut was actually taken
    assert fast.preemptions == slow.preemptions > 0
    for a, b in zip(fast.records, slow.records):
        assert (a.seq.first_scheduled, a.seq.first_token, a.seq.finished, a.seq.preemptions) == (
            b.seq.first_scheduled, b.seq.first_token, b.seq.finished, b.seq.preemptions)
    for ra, rb in zip(fast.replicas, slow.replicas):
        assert ra.steps == rb.steps
        assert ra.peak_used_blocks == rb.peak_used_blocks


def test_routing_spreads_work_by_predicted_tokens():
    # pick_worker sends each request to the worker with the least predicted
    # outstanding work: one huge prediction leaves the other worker the rest.
    reqs = [SimRequest("huge", 0.0, 8, 50)] + [SimRequest(f"s{i}", 0.001 * (i + 1), 8, 5)
                                               for i in range(6)]
    preds = [1000.0] + [5.0] * 6
    res = run_simulation(reqs, preds, config(policy=PolicyName.SJF, workers=2,
                                             kv_cache_tokens=4096), constant_steps())
    workers = {r.request.request_id: r.worker_id for r in res.records}
    assert {workers[f"s{i}"] for i in range(6)} == {"w1"}
    assert workers["huge"] == "w0"
