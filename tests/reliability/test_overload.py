"""Overload and starvation, against the gateway process and stand-in workers.

Overload: at 3x capacity the queue stays within its bound, the excess gets 429 with
Retry-After, the gateway's memory stays bounded and its throughput stays within 10%
of its peak. Starvation: under a sustained stream of short requests, a long request
finishes within the aging bound ``server.policy.aged_wait_bound_s`` computed from the
configuration, where plain SJF (the control) starves it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
from harness import assert_openai_error, chat_body

from server.config import GatewayConfig
from server.policy import aged_wait_bound_s

CHAT = "/v1/chat/completions"


async def _closed_loop(gw, clients: int, seconds: float, prompt_pad: int = 0) -> dict:
    """``clients`` clients each send one request after another for ``seconds``; rejected
    ones wait as long as Retry-After says. Returns counts, throughput and samples."""
    done: Counter = Counter()
    retry_after: list[int] = []
    depth: list[int] = []
    rss: list[int] = []
    end = time.monotonic() + seconds
    pad = "x " * prompt_pad

    async def one_client(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            resp = await client.post(gw.url + CHAT, json=chat_body(pad + "LEN=20"))
            if resp.status_code == 200:
                if time.monotonic() <= end:
                    done["ok"] += 1
            elif resp.status_code == 429:
                err = assert_openai_error(resp, 429)
                assert err["code"] == "queue_full"
                done["429"] += 1
                retry_after.append(int(resp.headers["retry-after"]))
                await asyncio.sleep(int(resp.headers["retry-after"]))
            else:
                done[f"http_{resp.status_code}"] += 1

    async def sampler(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            depth.append((await client.get(gw.url + "/health")).json()["queue_depth"])
            rss.append(gw.rss_bytes())
            await asyncio.sleep(0.1)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:
        start = time.monotonic()
        await asyncio.gather(sampler(client), *(one_client(client) for _ in range(clients)))
        elapsed = min(time.monotonic(), end) - start
    return {"counts": done, "throughput": done["ok"] / elapsed, "retry_after": retry_after,
            "max_depth": max(depth), "max_rss": max(rss), "min_rss": min(rss)}


def _merge(runs: list[dict]) -> dict:
    counts: Counter = sum((r["counts"] for r in runs), Counter())
    return {"counts": counts, "throughput": sum(r["throughput"] for r in runs) / len(runs),
            "retry_after": [x for r in runs for x in r["retry_after"]],
            "max_depth": max(r["max_depth"] for r in runs),
            "max_rss": max(r["max_rss"] for r in runs), "min_rss": min(r["min_rss"] for r in runs)}


async def test_three_times_capacity_is_refused_cleanly_without_collapse(
    standin_factory, gateway_process_factory
):
    # 1 s per request (20 tokens at 50 ms): the gateway's and the load generator's own CPU
    # time per request stays small next to it, so a busy shared machine moves both phases alike.
    workers = [standin_factory(token_delay_s=0.05), standin_factory(token_delay_s=0.05)]
    slots = 4
    capacity = slots * len(workers)  # requests the workers run at once
    queue_capacity = capacity
    extra = {}
    if "online_learning" in GatewayConfig.model_fields:
        # The online learner keeps its own bounded buffer and imports its model library on
        # its first refit (a one-time step of tens of MiB); this test measures what overload
        # itself costs, on the request path.
        extra["online_learning"] = False
    gw = gateway_process_factory([w.url for w in workers], max_sequences_per_worker=slots,
                                 queue_capacity=queue_capacity, request_log_path=None, **extra)
    pad = 4000  # ~8 KB prompts, so memory held per request would show
    # Warm-up. Then peak (1.5x capacity keeps every slot busy without refusals) and 3x
    # capacity, interleaved in rounds so that other load on a shared machine hits both alike.
    await _closed_loop(gw, capacity, 2.0, pad)
    rounds = [(await _closed_loop(gw, capacity + capacity // 2, 5.0, pad),
               await _closed_loop(gw, 3 * capacity, 5.0, pad)) for _ in range(3)]
    peak, over = (_merge([r[k] for r in rounds]) for k in (0, 1))
    assert peak["counts"]["429"] == 0 and set(peak["counts"]) == {"ok"}, peak
    print(f"\nRELIABILITY overload: peak {peak['throughput']:.1f} req/s, at 3x capacity "
          f"{over['throughput']:.1f} req/s ({over['throughput'] / peak['throughput']:.0%}); "
          f"{dict(over['counts'])}; max queue depth {over['max_depth']}/{queue_capacity}; "
          f"Retry-After {min(over['retry_after'])}-{max(over['retry_after'])} s; gateway RSS "
          f"{peak['min_rss'] / 2**20:.0f} -> {over['max_rss'] / 2**20:.0f} MiB")
    assert set(over["counts"]) == {"ok", "429"}, over["counts"]  # nothing but served or 429
    assert over["counts"]["429"] > 0
    assert all(1 <= r <= 120 for r in over["retry_after"])
    assert over["max_depth"] <= queue_capacity
    assert over["throughput"] >= 0.9 * peak["throughput"], (over, peak)
    # Bounded memory: overload costs no more than a few MiB over the peak's footprint.
    assert over["max_rss"] - peak["min_rss"] < 32 * 2**20
    for w in workers:
        assert w.state()["max_running"] <= slots


async def _starve(gw, long_len: int, short_clients: int, observe_s: float) -> dict:
    """Short requests from ``short_clients`` closed-loop clients; one long request joins
    once the queue is full of them. Returns the long request's queue wait (None if it was
    still waiting after ``observe_s``), its prediction, and the shorts' service times."""
    stop = asyncio.Event()
    shorts = 0

    async def short_client(client: httpx.AsyncClient) -> None:
        nonlocal shorts
        while not stop.is_set():
            resp = await client.post(gw.url + CHAT, json=chat_body("LEN=2"))
            assert resp.status_code == 200, resp.text
            shorts += 1

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as client:
        loops = [asyncio.ensure_future(short_client(client)) for _ in range(short_clients)]
        await asyncio.sleep(1.0)
        long_task = asyncio.ensure_future(client.post(gw.url + CHAT,
                                                      json=chat_body(f"LEN={long_len}")))
        sent = time.monotonic()
        done, _ = await asyncio.wait({long_task}, timeout=observe_s)
        shorts_while_waiting = shorts
        stop.set()
        await asyncio.gather(*loops)
        resp = await long_task  # with the shorts gone it is served (both arms)
    assert resp.status_code == 200
    return {
        "queue_wait_s": float(resp.headers["x-lengthwise-queue-ms"]) / 1000 if done else None,
        "e2e_s": time.monotonic() - sent if done else None,
        "predicted": float(resp.headers["x-lengthwise-predicted-tokens"]),
        "shorts": shorts_while_waiting,
    }


async def test_long_request_finishes_within_the_aging_bound_under_a_stream_of_short_ones(
    standin_factory, gateway_process_factory
):
    worker = standin_factory(token_delay_s=0.02)
    aging = 0.01  # seconds per predicted token
    queue_capacity = 16
    common = {"max_sequences_per_worker": 1, "queue_capacity": queue_capacity,
              "aging_s_per_token": aging}
    aged = gateway_process_factory([worker.url], policy="sjf-aged", **common)
    result = await _starve(aged, long_len=100, short_clients=6, observe_s=20.0)

    # The bound from the configuration (policy docstring): α·s + Q/μ, with μ the slowest
    # dispatch rate seen while the queue was non-empty: one slot, so 1 / longest short service.
    records = [r for r in aged.request_log() if r["predicted_tokens"] == 2.0]
    service = max(r["e2e_s"] - r["queue_wait_s"] for r in records)
    bound = aged_wait_bound_s(aging, result["predicted"], queue_capacity, 1.0 / service)
    print(f"\nRELIABILITY starvation: long request (predicted {result['predicted']:.0f} tokens) "
          f"waited {result['queue_wait_s']:.2f} s in the queue, bound {bound:.2f} s "
          f"(aging {aging} s/token, Q={queue_capacity}, slowest short {service * 1000:.0f} ms); "
          f"{result['shorts']} short requests served meanwhile")
    assert result["queue_wait_s"] is not None, "the long request starved under sjf-aged"
    assert result["queue_wait_s"] <= bound
    assert result["shorts"] > 20  # the short stream was sustained while it waited

    # Control: plain SJF, same load. The long request is still waiting well past the bound.
    plain = gateway_process_factory([worker.url], policy="sjf", **common)
    control = await _starve(plain, long_len=100, short_clients=6, observe_s=bound + 2.0)
    assert control["queue_wait_s"] is None, control
