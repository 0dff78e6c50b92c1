"""Parity: the simulator dispatches in exactly the order the policy module dictates.

The reference below drives a bare ``PolicyQueue`` with the same arrivals and
the same worker-free times the simulation produced (completions before
arrivals at equal times, as the event phases say), admitting while the
worker has fewer than ``limit`` requests in flight. Any difference in
ordering, tie-breaking or admission between the simulated gateway and the
policy module shows up as a different sequence.
"""

from __future__ import annotations

import pytest
from sim_helpers import STEP_MODEL, config, synthetic

from server.policy import (
    AdmissionLimits,
    EngineQueueMode,
    PolicyConfig,
    PolicyName,
    PolicyQueue,
    QueuedRequest,
    make_policy,
)
from simulator.simulation import run_simulation


def _reference_order(requests, preds, finish_times, policy: PolicyConfig, limit: int):
    queue = PolicyQueue(make_policy(policy))
    events = [(r.arrival_time, 1, i) for i, r in enumerate(requests)]
    events += [(t, 0, i) for i, t in enumerate(finish_times)]
    events.sort()
    in_flight = 0
    order = []
    for _t, kind, i in events:
        if kind == 0:
            in_flight -= 1
        else:
            r = requests[i]
            queue.push(QueuedRequest(r.request_id, r.arrival_time, preds[i], r.prompt_tokens))
        while len(queue) and in_flight < limit:
            order.append(queue.pop().request_id)
            in_flight += 1
    return order


@pytest.mark.parametrize("policy", list(PolicyName))
def test_dispatch_order_matches_policy_queue(policy):
    reqs = synthetic(300, seed=7, rate=40.0)
    # noisy but deterministic predictions so SJF order differs from FCFS
    preds = [float((r.output_tokens * 37) % 53 + 1) for r in reqs]
    limit = 3
    cfg = config(policy=policy, mode=EngineQueueMode.PRIORITY,
                 admission=AdmissionLimits.fixed(limit), kv_cache_tokens=4096)
    res = run_simulation(reqs, preds, cfg, STEP_MODEL)
    finish = [rec.seq.finished for rec in res.records]
    expected = _reference_order(reqs, preds, finish, cfg.policy, limit)
    assert res.gateway.dispatch_order == expected
    # the queue really held requests, so the order was the policy's to decide
    assert max(rec.dispatch_time - rec.request.arrival_time for rec in res.records) > 0.1
    if policy != PolicyName.FCFS:
        assert expected != sorted(expected)
