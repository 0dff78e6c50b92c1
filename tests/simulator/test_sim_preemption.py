"""Preemption by recompute when KV blocks run out, for both vLLM victim rules."""

from __future__ import annotations

from sim_helpers import config, constant_steps

from server.policy import EngineQueueMode, PolicyName
from simulator.latency import LinearStepModel
from simulator.simulation import run_simulation
from simulator.trace import SimRequest

# 8 blocks of 4 tokens. Each request holds 2 blocks after its prefill and
# grows by one block every 4 tokens, so three of them run out of blocks
# long before they finish.
TIGHT = {"kv_cache_tokens": 32, "block_size": 4, "max_num_seqs": 8, "max_num_batched_tokens": 64}


def _run(mode: EngineQueueMode, policy: PolicyName, preds: list[float]):
    reqs = [SimRequest(name, i * 0.001, 8, 12) for i, name in enumerate(("a", "b", "c"))]
    cfg = config(policy=policy, mode=mode, **TIGHT)
    return run_simulation(reqs, preds, cfg, constant_steps())


def _first_victim(res):
    # the request whose preemption count rose first: replay the engine's
    # steps is not possible from records alone, so use the per-request counts
    return {r.request.request_id: r.seq.preemptions for r in res.records}


def test_fcfs_preempts_the_most_recently_scheduled():
    res = _run(EngineQueueMode.FCFS, PolicyName.FCFS, [1.0, 1.0, 1.0])
    counts = _first_victim(res)
    assert res.preemptions > 0
    # vLLM FCFS pops running[-1]: the latest request is the victim, the
    # oldest is never preempted.
    assert counts["a"] == 0
    assert counts["c"] >= 1
    assert res.gateway.completed == 3


def test_priority_preempts_the_lowest_priority_even_if_oldest():
    # SJF ranks by predicted length: 'a' (predicted long) gets the largest
    # priority value, so the priority rule evicts it although it came first.
    res = _run(EngineQueueMode.PRIORITY, PolicyName.SJF, [300.0, 20.0, 10.0])
    counts = _first_victim(res)
    assert res.preemptions > 0
    assert counts["a"] >= 1
    assert counts["c"] == 0
    assert res.gateway.completed == 3


def test_preempted_request_recomputes_its_prompt_and_output():
    # One request alone, KV for exactly its prompt + output: no preemption; the
    # same with a second request forces recompute, which costs extra tokens.
    solo = run_simulation([SimRequest("a", 0.0, 8, 12)], [1.0],
                          config(**TIGHT), LinearStepModel({"intercept": 0.01, "tokens": 0.001}))
    assert solo.preemptions == 0
    res = _run(EngineQueueMode.FCFS, PolicyName.FCFS, [1.0, 1.0, 1.0])
    scheduled = sum(s.num_scheduled_tokens for s in res.replicas[0].steps)
    # without recompute each request needs 8 prompt + 11 decode tokens
    assert scheduled > 3 * (8 + 11)
    for rec in res.records:
        assert rec.seq.num_generated == 12
