"""What the gateway learns of an engine's capacity from vLLM's /metrics (pure parsing)."""

from __future__ import annotations

from server.engine_stats import EngineStats, learn_engine_view
from server.policy import EngineView

SCRAPE = """
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 64.0
vllm:num_requests_waiting{engine="0",model_name="m"} 136.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.41
vllm:cache_config_info{block_size="128",engine="0",kv_cache_size_tokens="93184",\
model_name="m, \\"quoted\\"",num_gpu_blocks="728"} 1.0
"""


def stats(running: float, waiting: float, kv: float | None = 0.3) -> EngineStats:
    return EngineStats(kv, running, waiting, 1000.0)


def test_a_vllm_scrape_gives_running_waiting_usage_and_the_kv_capacity():
    s = EngineStats.from_vllm_scrape(SCRAPE)
    assert (s.num_running, s.num_waiting, s.kv_cache_usage) == (64.0, 136.0, 0.41)
    assert s.kv_capacity_tokens == 728 * 128


def test_the_slots_are_learned_when_requests_wait_beside_a_full_batch():
    view = learn_engine_view(EngineView(), stats(5, 0))
    assert view.max_running is None  # a count at low load says nothing
    view = learn_engine_view(view, stats(64, 3))
    assert view.max_running == 64 and view.kv_capacity_tokens == 1000.0
    # waiting because the KV cache is full: the running count is not the slot limit
    assert learn_engine_view(EngineView(), stats(20, 9, kv=0.97)).max_running is None


def test_a_grown_engine_raises_the_estimate_and_a_shrunk_one_lowers_it_after_two_reports():
    view = EngineView(max_running=64)
    assert learn_engine_view(view, stats(66, 0)).max_running == 66
    once = learn_engine_view(view, stats(32, 5))
    assert once.max_running == 64  # one report could be a token-budget wait
    assert learn_engine_view(once, stats(32, 4)).max_running == 32
    # an interrupted run of reports does not lower it
    assert learn_engine_view(learn_engine_view(once, stats(64, 2)),
                             stats(32, 4)).max_running == 64


def test_a_configured_slot_count_wins():
    assert learn_engine_view(EngineView(), stats(3, 9), configured_max_running=64).max_running == 64
