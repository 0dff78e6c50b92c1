"""Prefix caching and asynchronous scheduling, on cases small enough to reason about."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sim_helpers import config, constant_steps

from server.policy import EngineQueueMode, PolicyName
from simulator.kv_cache import BlockPool
from simulator.simulation import run_simulation
from simulator.trace import SimRequest

# 8 blocks of 4 tokens: three requests of 8 + 12 tokens cannot all stay resident
TIGHT = {"kv_cache_tokens": 32, "block_size": 4, "max_num_seqs": 8, "max_num_batched_tokens": 64}


def test_the_pool_evicts_least_recently_freed_blocks_and_a_request_finds_its_own_prefix():
    pool = BlockPool(4)
    a = pool.allocate(3)
    for i, block in enumerate(a):
        pool.cache(block, ("a", i))
    pool.free(a)  # last block first: ("a", 2) is the first to be reused
    assert pool.num_free == 4
    pool.allocate(2)  # the never-used block, then a's last block
    assert pool.lookup([("a", 0), ("a", 1), ("a", 2)]) == a[:2]
    assert pool.evictable(a[:2]) == 2
    pool.touch(a[:2])
    assert pool.num_free == 0


def _tight_run(prefix_caching: bool):
    reqs = [SimRequest(name, i * 0.001, 8, 12) for i, name in enumerate("abc")]
    cfg = config(policy=PolicyName.FCFS, mode=EngineQueueMode.FCFS, **TIGHT)
    cfg = replace(cfg, engine=replace(cfg.engine, prefix_caching=prefix_caching))
    return run_simulation(reqs, [1.0] * 3, cfg, constant_steps())


def test_prefix_caching_saves_part_of_a_preempted_requests_recompute():
    cold, warm = _tight_run(False), _tight_run(True)
    assert cold.preemptions > 0 and warm.preemptions > 0
    recomputed = [sum(r.seq.recomputed_tokens for r in res.records) for res in (cold, warm)]
    assert recomputed[1] < recomputed[0]
    assert warm.replicas[0].prefix_hit_tokens > 0
    assert all(r.seq.finished is not None for r in warm.records)


def test_requests_sharing_a_prompt_prefix_share_its_blocks():
    shared = {"prefix_hashes": (7, 8), "prefix_block_tokens": 16}
    reqs = [SimRequest("a", 0.0, 40, 2, **shared), SimRequest("b", 1.0, 40, 2, **shared),
            SimRequest("c", 2.0, 40, 2)]
    res = run_simulation(reqs, [1.0] * 3, config(kv_cache_tokens=1024), constant_steps())
    # b reuses a's two full 16-token prefix blocks; c shares nothing
    assert res.replicas[0].prefix_hit_tokens == 32
    steps = res.replicas[0].steps
    assert [s.num_scheduled_tokens for s in steps if s.num_scheduled_tokens > 1] == [40, 8, 40]


@pytest.mark.parametrize("async_scheduling, extra_steps", [(False, 0), (True, 1)])
def test_a_request_arriving_mid_step_waits_one_more_step_under_async_scheduling(
        async_scheduling, extra_steps):
    # a decodes for 20 steps of 10 ms; b arrives 5 ms into step 3
    reqs = [SimRequest("a", 0.0, 4, 20), SimRequest("b", 0.025, 4, 2)]
    cfg = config(kv_cache_tokens=4096)
    cfg = replace(cfg, engine=replace(cfg.engine, async_scheduling=async_scheduling))
    res = run_simulation(reqs, [1.0, 1.0], cfg, constant_steps(0.010))
    b = res.records[1].seq
    # synchronous: scheduled when step 3 ends (30 ms), first token at 40 ms
    assert b.first_token == pytest.approx(0.040 + 0.010 * extra_steps)


def test_async_scheduling_reuses_a_finished_requests_slot_one_step_later():
    # two slots: c keeps decoding, b waits for a, whose last token ends step 3. The
    # async engine fixed step 4 (with c) when step 3 started, so b's first step is 5.
    reqs = [SimRequest("a", 0.0, 4, 3), SimRequest("c", 0.0, 4, 50),
            SimRequest("b", 0.0, 4, 1)]
    times = {}
    for flag in (False, True):
        cfg = config(max_num_seqs=2, kv_cache_tokens=4096)
        cfg = replace(cfg, engine=replace(cfg.engine, async_scheduling=flag))
        res = run_simulation(reqs, [1.0] * 3, cfg, constant_steps(0.010))
        times[flag] = res.records[2].seq.first_token
    assert times[False] == pytest.approx(0.040)
    assert times[True] == pytest.approx(0.050)


def test_with_nothing_else_to_run_the_async_engine_has_no_lag():
    # one slot: when a's last step starts there is nothing to schedule ahead, so the
    # engine takes b as soon as a ends, as the synchronous loop does
    reqs = [SimRequest("a", 0.0, 4, 3), SimRequest("b", 0.0, 4, 1)]
    cfg = config(max_num_seqs=1, kv_cache_tokens=4096)
    res = run_simulation(reqs, [1.0, 1.0], cfg, constant_steps(0.010))
    assert res.records[1].seq.first_token == pytest.approx(0.040)
