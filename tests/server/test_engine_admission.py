"""Admission that follows the engine, through the real gateway and a stand-in engine.

The stand-in worker behaves like a vLLM engine with ``max_num_seqs`` (requests beyond it
wait in its own queue, ordered by ``priority``) and a KV cache it reports in
``vllm:cache_config_info``; the gateway learns both from its ``/metrics`` and must keep
the engine's batch full while holding only the excess, and follow changes in them.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from harness import chat_body, wait_until

CHAT = "/v1/chat/completions"


def slots(gw, worker) -> float:
    return gw.metric("lengthwise_worker_engine_slots", worker=worker.url)


async def _burst(url: str, bodies: list[dict], sample, timeout_s: float = 120) -> list:
    """Send ``bodies`` at once while ``sample()`` is polled; returns the responses."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        sending = asyncio.gather(*(client.post(url + CHAT, json=b) for b in bodies))
        task = asyncio.ensure_future(sending)
        while not task.done():
            sample()
            await asyncio.sleep(0.05)
        return await task


async def test_admission_learns_the_engines_slots_and_follows_changes(standin_factory,
                                                                      gateway_factory):
    worker = standin_factory(token_delay_s=0.03)
    worker.control(max_num_seqs=3)
    gw = gateway_factory([worker.url], engine_stats_interval_s=0.1, engine_queue=1,
                         online_learning=False)
    # A first burst lets the gateway see requests waiting beside three running ones.
    await _burst(gw.url, [chat_body(f"warm {i} LEN=20") for i in range(8)], lambda: None)
    assert wait_until(lambda: slots(gw, worker) == 3)
    seen: list[tuple[int, int]] = []

    def sample() -> None:
        state = worker.state()
        seen.append((state["running"], state["waiting"]))

    resps = await _burst(gw.url, [chat_body(f"r{i} LEN=15") for i in range(12)], sample)
    assert all(r.status_code == 200 for r in resps)
    assert max(r for r, _ in seen) == 3  # the engine's batch was full
    assert max(w for _, w in seen) <= 1  # and only engine_queue waited inside it
    held = [r for r in resps if float(r.headers["x-lengthwise-queue-ms"]) > 100]
    assert len(held) >= 12 - 3 - 1 - 1  # the excess waited in the gateway's queue

    # The engine grows: after a burst that shows it, the gateway fills six slots.
    worker.control(max_num_seqs=6)
    await _burst(gw.url, [chat_body(f"grow {i} LEN=20") for i in range(14)], lambda: None)
    assert slots(gw, worker) == 6
    seen.clear()
    resps = await _burst(gw.url, [chat_body(f"s{i} LEN=15") for i in range(16)], sample)
    assert all(r.status_code == 200 for r in resps)
    assert max(r for r, _ in seen) == 6
    assert max(w for _, w in seen) <= 1


async def test_kv_admission_follows_the_cache_the_engine_reports(standin_factory,
                                                                 gateway_factory):
    # No sequence limit in the engine: only the KV budget can hold requests back.
    worker = standin_factory(token_delay_s=0.03)
    worker.control(kv_blocks=16, block_size=16)  # 256 tokens
    gw = gateway_factory([worker.url], engine_stats_interval_s=0.1, kv_budget=1.0,
                         online_learning=False)
    # max_tokens 50 caps every prediction's p90, so each request counts about 60 tokens
    bodies = [chat_body(f"kv {i} LEN=40", max_tokens=50) for i in range(12)]
    assert wait_until(lambda: gw.metric("lengthwise_worker_engine_kv_capacity_tokens",
                                        worker=worker.url) == 256)
    seen: list[int] = []
    resps = await _burst(gw.url, bodies, lambda: seen.append(worker.state()["running"]))
    assert all(r.status_code == 200 for r in resps)
    small = max(seen)
    assert 2 <= small <= 5, seen

    worker.control(kv_blocks=128)  # 2,048 tokens: the engine reports a larger cache
    assert wait_until(lambda: gw.metric("lengthwise_worker_engine_kv_capacity_tokens",
                                        worker=worker.url) == 2048)
    seen.clear()
    resps = await _burst(gw.url, [dict(b, messages=[{"role": "user",
                                                     "content": f"big {i} LEN=40"}])
                                  for i, b in enumerate(bodies)],
                         lambda: seen.append(worker.state()["running"]))
    assert all(r.status_code == 200 for r in resps)
    assert max(seen) >= 10 > small


async def test_client_priority_bands_are_served_before_the_length_order(standin_factory,
                                                                        gateway_factory):
    """One slot, a queue: every band-0 request starts before any band-1 one, and inside a
    band the shorter predictions start first; the worker sees the bands in ``priority``."""
    worker = standin_factory(token_delay_s=0.02)
    gw = gateway_factory([worker.url], worker_max_num_seqs=1, engine_queue=0, policy="sjf",
                         online_learning=False)
    async with httpx.AsyncClient(timeout=120) as client:
        blocker = asyncio.ensure_future(client.post(gw.url + CHAT,
                                                    json=chat_body("blocker LEN=60")))
        for _ in range(200):  # (an async wait: the blocker's request must get sent)
            if worker.state()["running"] == 1:
                break
            await asyncio.sleep(0.05)
        assert worker.state()["running"] == 1
        # max_tokens caps each prediction, so the predicted order is known
        spec = [("b1-short", 1, 5), ("b0-long", 0, 400), ("b1-long", 1, 400),
                ("b0-short", 0, 5), ("b0-mid", 0, 60)]
        bodies = [chat_body(f"{name}: write a long essay about rivers LEN=3",
                            max_tokens=cap, priority=band) for name, band, cap in spec]
        resps = await asyncio.gather(*(client.post(gw.url + CHAT, json=b) for b in bodies))
        await blocker
    assert all(r.status_code == 200 for r in resps), [r.text for r in resps]
    started = [text.split(":")[0] for text in worker.state()["started"]
               if not text.startswith("blocker")]
    assert started == ["b0-short", "b0-mid", "b0-long", "b1-short", "b1-long"]
    sent = {json.dumps(b["messages"]): b for b in worker.state()["received"]}
    band1 = [b["priority"] for b in sent.values() if "b1-" in b["messages"][0]["content"]]
    band0 = [b["priority"] for b in sent.values() if "b0-" in b["messages"][0]["content"]]
    assert min(band1) > max(band0)
