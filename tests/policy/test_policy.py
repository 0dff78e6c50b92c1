"""Behaviour of the shared scheduling policy (server.policy): order, aging, bounds, routing."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from server.policy import (
    AdmissionLimits,
    AgedSJFPolicy,
    EngineView,
    FCFSPolicy,
    PolicyConfig,
    PolicyName,
    PolicyQueue,
    QueuedRequest,
    QueueFull,
    SJFPolicy,
    WorkerLoad,
    aged_wait_bound_s,
    can_admit,
    engine_priority,
    has_free_slot,
    make_policy,
    pick_worker,
    plan_dispatch,
)


def req(rid: str, arrival: float, predicted: float) -> QueuedRequest:
    return QueuedRequest(rid, arrival, predicted)


def drain(queue: PolicyQueue) -> list[str]:
    out = []
    while len(queue):
        out.append(queue.pop().request_id)
    return out


def test_fcfs_serves_in_arrival_order_whatever_the_prediction():
    q = PolicyQueue(FCFSPolicy())
    for r in [req("b", 2.0, 1), req("a", 1.0, 500), req("c", 3.0, 5)]:
        q.push(r)
    assert drain(q) == ["a", "b", "c"]


def test_sjf_serves_shortest_prediction_first_and_breaks_ties_by_arrival_then_id():
    q = PolicyQueue(SJFPolicy())
    for r in [req("long", 0.0, 400), req("mid", 1.0, 50), req("short2", 2.0, 5),
              req("short1", 1.5, 5), req("z", 1.5, 5)]:
        q.push(r)
    assert drain(q) == ["short1", "z", "short2", "mid", "long"]


def test_sub_token_predictions_rank_as_one_token():
    q = PolicyQueue(SJFPolicy())
    q.push(req("one", 0.0, 1.0))
    q.push(req("zero", 2.0, 0.0))
    q.push(req("negative", 1.0, -5.0))
    assert drain(q) == ["one", "negative", "zero"]


@pytest.mark.parametrize("policy", [SJFPolicy(), AgedSJFPolicy(aging_s_per_token=0.05)],
                         ids=["sjf", "sjf-aged"])
@pytest.mark.parametrize("broken", [float("nan"), float("inf"), float("-inf")])
def test_a_broken_prediction_never_jumps_the_queue_whatever_the_push_order(policy, broken):
    requests = [req("broken", 0.0, broken), req("short", 0.0, 5.0), req("long", 0.0, 900.0)]
    for order in itertools.permutations(requests):
        q = PolicyQueue(policy)
        for r in order:
            q.push(r)
        assert drain(q) == ["short", "long", "broken"], [r.request_id for r in order]


def test_aged_sjf_lets_a_long_request_overtake_once_its_deadline_passes():
    policy = AgedSJFPolicy(aging_s_per_token=0.01)
    q = PolicyQueue(policy)
    q.push(req("long", 0.0, 100))  # deadline 1.0
    q.push(req("short_early", 0.5, 10))  # deadline 0.6 < 1.0: goes first
    q.push(req("short_late", 0.95, 10))  # deadline 1.05 > 1.0: long goes first
    assert drain(q) == ["short_early", "long", "short_late"]


def test_aged_wait_bound_holds_under_a_sustained_stream_of_short_requests():
    """Simulate one server taking requests at a fixed rate while shorts keep arriving."""
    alpha, long_pred, short_pred = 0.02, 200.0, 5.0
    service_s = 0.05  # one dispatch every 50 ms
    capacity = 64
    q = PolicyQueue(AgedSJFPolicy(alpha), capacity)
    q.push(req("long", 0.0, long_pred))
    rng = random.Random(7)
    now, arrivals, next_id, finished_long_at = 0.0, 0.0, 0, None
    while finished_long_at is None and now < 100:
        # Shorts arrive faster than they are served, so the queue never empties.
        while arrivals <= now:
            try:
                q.push(req(f"s{next_id}", arrivals, short_pred))
            except QueueFull:
                pass
            next_id += 1
            arrivals += rng.expovariate(30.0)
        if q.pop().request_id == "long":
            finished_long_at = now
        now += service_s
    bound = aged_wait_bound_s(alpha, long_pred, capacity, 1 / service_s)
    assert finished_long_at is not None
    assert finished_long_at <= bound
    # Plain SJF starves it over the same horizon.
    assert finished_long_at > alpha * long_pred - service_s


def test_plain_sjf_starves_the_long_request_under_the_same_stream():
    q = PolicyQueue(SJFPolicy(), 64)
    q.push(req("long", 0.0, 200))
    served = []
    for i in range(500):
        q.push(req(f"s{i}", i * 0.01, 5))
        served.append(q.pop().request_id)
    assert "long" not in served


def test_order_is_deterministic_across_insertion_orders():
    reqs = [req(f"r{i}", float(i % 7), float((i * 37) % 50)) for i in range(60)]
    for policy in (FCFSPolicy(), SJFPolicy(), AgedSJFPolicy(0.05)):
        orders = set()
        for seed in range(5):
            shuffled = reqs[:]
            random.Random(seed).shuffle(shuffled)
            q = PolicyQueue(policy)
            for r in shuffled:
                q.push(r)
            orders.add(tuple(drain(q)))
        assert len(orders) == 1, policy.name


def test_queue_full_rejects_and_frees_after_pop():
    q = PolicyQueue(FCFSPolicy(), capacity=2)
    q.push(req("a", 0, 1))
    q.push(req("b", 1, 1))
    with pytest.raises(QueueFull):
        q.push(req("c", 2, 1))
    q.pop()
    q.push(req("c", 2, 1))
    assert len(q) == 2


def test_removal_skips_the_request_and_frees_capacity():
    q = PolicyQueue(SJFPolicy(), capacity=3)
    for r in [req("a", 0, 1), req("b", 1, 2), req("c", 2, 3)]:
        q.push(r)
    assert q.remove("a") is True
    assert q.remove("a") is False
    assert "a" not in q
    q.push(req("d", 3, 10))
    assert q.peek().request_id == "b"
    assert drain(q) == ["b", "c", "d"]


def test_duplicate_ids_are_refused():
    q = PolicyQueue(FCFSPolicy())
    q.push(req("a", 0, 1))
    with pytest.raises(ValueError):
        q.push(req("a", 1, 1))


def test_make_policy_builds_each_named_policy():
    assert isinstance(make_policy(PolicyConfig(PolicyName.FCFS)), FCFSPolicy)
    assert isinstance(make_policy(PolicyConfig(PolicyName.SJF)), SJFPolicy)
    aged = make_policy(PolicyConfig(PolicyName.SJF_AGED, aging_s_per_token=0.2))
    assert isinstance(aged, AgedSJFPolicy) and aged.aging_s_per_token == 0.2
    with pytest.raises(ValueError):
        AgedSJFPolicy(0.0)


def test_engine_priority_preserves_the_queue_order():
    policy = AgedSJFPolicy(0.05)
    reqs = [req(f"r{i}", 100.0 + i * 0.3, float((i * 13) % 40 + 1)) for i in range(30)]
    keys = sorted(policy.key(r) for r in reqs)
    prios = [engine_priority(k, epoch=100.0) for k in keys]
    assert prios == sorted(prios)
    assert min(prios) >= 0


def test_admission_limits_and_least_outstanding_work_routing():
    limits = AdmissionLimits(max_sequences=2, max_predicted_tokens=100)
    r = req("x", 0, 30)
    loads = [
        WorkerLoad("w1", True, 1, 80.0),
        WorkerLoad("w2", True, 1, 20.0),
        WorkerLoad("w3", False, 0, 0.0),  # unhealthy: never picked
        WorkerLoad("w4", True, 2, 0.0),  # at the sequence limit
    ]
    assert pick_worker(loads, r, limits) == "w2"
    # w1 would exceed the token budget.
    assert not can_admit(loads[0], r, limits)
    # An idle worker takes a request larger than the whole budget.
    assert can_admit(WorkerLoad("w5", True, 0, 0.0), req("big", 0, 1000), limits)
    assert pick_worker([loads[2], loads[3]], r, limits) is None


def test_routing_ties_are_deterministic():
    limits = AdmissionLimits()
    loads = [WorkerLoad("b", True, 1, 10.0), WorkerLoad("a", True, 1, 10.0)]
    assert pick_worker(loads, req("x", 0, 1), limits) == "a"


# --- admission that follows the engine ---------------------------------------------------


def _load(wid: str, n: int = 0, *, slots: int | None = None, kv: float | None = None,
          kv_in_flight: float = 0.0, models: frozenset[str] | None = None) -> WorkerLoad:
    return WorkerLoad(wid, True, n, 10.0 * n, kv_in_flight, models,
                      EngineView(max_running=slots, kv_capacity_tokens=kv))


def test_admission_fills_the_engines_slots_and_its_small_queue_then_holds():
    limits = AdmissionLimits(engine_queue=2)
    r = req("r", 0.0, 10.0)
    assert can_admit(_load("w", 5, slots=6), r, limits)
    assert can_admit(_load("w", 7, slots=6), r, limits)  # in vLLM's own queue
    assert not can_admit(_load("w", 8, slots=6), r, limits)
    # an engine that reported nothing yet is not limited
    assert can_admit(_load("w", 500), r, limits)
    # hand-set caps only: the engine's size does not matter
    assert can_admit(_load("w", 500, slots=6), r, AdmissionLimits.fixed())


def test_kv_budget_counts_the_predicted_footprint_against_the_engines_cache():
    limits = AdmissionLimits(kv_budget=1.0)
    big = QueuedRequest("big", 0.0, 100.0, kv_tokens=300.0)
    assert can_admit(_load("w", 2, kv=1000.0, kv_in_flight=700.0), big, limits)
    assert not can_admit(_load("w", 2, kv=1000.0, kv_in_flight=701.0), big, limits)
    # an idle engine always takes one, however big
    assert can_admit(_load("w", 0, kv=100.0), big, limits)
    assert can_admit(_load("w", 2, kv=1000.0, kv_in_flight=900.0), big, AdmissionLimits())


def test_a_free_slot_means_a_running_slot_not_room_in_the_engines_queue():
    limits = AdmissionLimits(engine_queue=2)
    r = req("r", 0.0, 10.0)
    assert has_free_slot(_load("w", 5, slots=6), r, limits)
    assert not has_free_slot(_load("w", 6, slots=6), r, limits)  # would wait in vLLM
    assert not has_free_slot(_load("w", 0), r, limits)  # slots unknown: not free
    assert has_free_slot(_load("w", 0), r, AdmissionLimits.fixed(max_sequences=1))


def test_requests_only_go_to_workers_serving_their_model():
    a, b = _load("a", models=frozenset({"m1"})), _load("b", 3, models=frozenset({"m2"}))
    limits = AdmissionLimits()
    assert pick_worker([a, b], QueuedRequest("x", 0, 5, model="m2"), limits) == "b"
    assert pick_worker([a, b], QueuedRequest("y", 0, 5, model="m1"), limits) == "a"
    assert pick_worker([a, b], QueuedRequest("z", 0, 5, model="m3"), limits) is None


def test_a_request_that_cannot_be_placed_holds_only_the_workers_it_could_use():
    q = PolicyQueue(FCFSPolicy())
    q.push(QueuedRequest("retry", 0.0, 5, model="m"))  # excluded from w1, w2 is full
    q.push(QueuedRequest("next", 1.0, 5, model="m"))
    q.push(QueuedRequest("other-model", 2.0, 5, model="m2"))
    loads = {"w1": _load("w1", 0, slots=1, models=frozenset({"m"})),
             "w2": _load("w2", 3, slots=1, models=frozenset({"m"})),
             "w3": _load("w3", 0, slots=1, models=frozenset({"m2"}))}
    placed = plan_dispatch(q, loads, AdmissionLimits(engine_queue=0),
                           lambda r: frozenset({"w1"}) if r.request_id == "retry" else frozenset())
    assert [(r.request_id, w) for r, w in placed] == [("next", "w1"), ("other-model", "w3")]
    assert [r.request_id for r in q] == ["retry"]


def test_a_waiting_head_is_not_overtaken_where_it_waits():
    q = PolicyQueue(FCFSPolicy())
    q.push(QueuedRequest("head", 0.0, 5))
    q.push(QueuedRequest("behind", 1.0, 5))
    loads = {"w": _load("w", 1, slots=1)}
    assert plan_dispatch(q, loads, AdmissionLimits(engine_queue=0)) == []
    assert [r.request_id for r in q] == ["head", "behind"]


def test_client_priority_bands_come_before_any_length_key():
    for policy in (FCFSPolicy(), SJFPolicy(), AgedSJFPolicy(aging_s_per_token=0.05)):
        q = PolicyQueue(policy)
        q.push(QueuedRequest("low-short", 0.0, 1.0, priority=1))
        q.push(QueuedRequest("high-long", 5.0, 5000.0, priority=0))
        q.push(QueuedRequest("urgent", 9.0, 900.0, priority=-1))
        assert drain(q) == ["urgent", "high-long", "low-short"], policy.name


def test_engine_priority_keeps_bands_apart_and_the_order_inside_them():
    policy = AgedSJFPolicy(aging_s_per_token=0.05)
    keys = [policy.key(QueuedRequest(rid, 100.0, tokens, priority=band))
            for rid, tokens, band in [("a", 10, 0), ("b", 900, 0), ("c", 1, 1), ("d", 1, -1)]]
    ranks = [engine_priority(k, epoch=100.0) for k in keys]
    assert ranks[3] < ranks[0] < ranks[1] < ranks[2]


def test_the_size_counts_the_prompt_by_its_weight():
    policy = SJFPolicy(prompt_token_weight=0.01)
    q = PolicyQueue(policy)
    q.push(QueuedRequest("long-prompt", 0.0, 10.0, prompt_tokens=2000))  # size 30
    q.push(QueuedRequest("short-prompt", 1.0, 20.0, prompt_tokens=10))  # size 20.1
    assert drain(q) == ["short-prompt", "long-prompt"]


@pytest.mark.parametrize("broken", [float("nan"), float("inf")])
def test_a_broken_p90_leaves_the_kv_accounting_finite(broken):
    from predictor.types import LengthPrediction
    from server.policy import PointEstimate
    from server.sizing import RequestSizer

    sizer = RequestSizer(predictor=None, point_estimate=PointEstimate.MEAN,
                         predict_in_thread=False)
    queued = QueuedRequest("r", 0.0, 1.0, prompt_tokens=100)
    sized = sizer.sized(queued, LengthPrediction(mean=50.0, p50=40.0, p90=broken), 50.0, 1)
    assert math.isfinite(sized.kv_tokens) and sized.kv_tokens > 100
    other = QueuedRequest("o", 0.0, 10.0, prompt_tokens=20, kv_tokens=30.0)
    load = WorkerLoad("w", True, 0, 0.0).plus(other).plus(sized)
    assert math.isfinite(load.in_flight_kv_tokens)
    assert load.minus(sized).in_flight_kv_tokens == pytest.approx(30.0)
