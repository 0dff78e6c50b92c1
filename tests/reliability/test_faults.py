"""Faults, against the gateway process and stand-in worker processes: clients that leave,
a worker killed mid-run, a worker that stalls. Every request ends in a counted, clear
outcome; none is lost silently and none hangs."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import httpx
from harness import chat_body, sse_payloads, wait_until

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# --- client disconnects ---------------------------------------------------------------------


async def test_fifty_streaming_clients_disconnecting_abort_every_upstream_request(
    standin_factory, gateway_process_factory
):
    worker = standin_factory(token_delay_s=0.02)
    # 20 slots: 30 of the 50 clients wait in the gateway's queue, so some leave while queued.
    gw = gateway_process_factory([worker.url], max_sequences_per_worker=20)
    rng = random.Random(8)
    plan = [("queued_or_headers", rng.uniform(0.05, 1.5)) if i % 3 == 0
            else ("mid_stream", rng.randint(1, 40)) for i in range(50)]
    left = Counter()
    # One client, no keep-alive: every request has its own connection, closed when it leaves.
    client = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None,
                                                               max_keepalive_connections=0))

    async def client_leaves(kind: str, when: float) -> None:
        body = chat_body("LEN=400", stream=True, stream_options={"include_usage": True})
        if kind == "queued_or_headers":
            try:
                async with asyncio.timeout(when):
                    async with client.stream("POST", gw.url + CHAT, json=body) as resp:
                        async for _ in resp.aiter_lines():
                            pass
            except TimeoutError:
                left[kind] += 1
            return
        async with client.stream("POST", gw.url + CHAT, json=body) as resp:
            assert resp.status_code == 200
            seen = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen >= when:
                        left[kind] += 1
                        return  # closes the connection mid-stream

    async with client:
        await asyncio.gather(*(client_leaves(kind, when) for kind, when in plan))
    assert sum(left.values()) == 50, left

    def settled() -> bool:
        health = gw.health()
        return (worker.state()["running"] == 0 and health["in_flight"] == 0
                and health["queue_depth"] == 0)

    assert await asyncio.to_thread(wait_until, settled, 15.0), (
        worker.state()["running"], gw.health(), left)
    state = worker.state()
    # Every request that reached the worker was aborted there; none ran on to completion.
    assert state["completed"] == 0
    assert state["aborted"] == len(state["received"]) > 0
    assert gw.metric("lengthwise_worker_in_flight", worker=worker.url) == 0
    assert gw.metric("lengthwise_worker_in_flight_predicted_tokens", worker=worker.url) == 0
    depths = [v for (name, _), v in gw.metrics().items() if name == "lengthwise_queue_depth"]
    assert depths and all(v == 0 for v in depths)  # labelled by policy; the series must exist
    # A client that leaves before the gateway has read its request leaves no trace; every
    # other one is logged as a disconnect, and nothing ran to completion.
    await asyncio.to_thread(wait_until, lambda: len(gw.request_log()) == 50, 5.0)
    records = gw.request_log()
    assert len(state["received"]) <= len(records) <= 50
    assert {r["status"] for r in records} == {"client_disconnected"}
    print(f"\nRELIABILITY disconnects: {dict(left)}; reached worker {len(state['received'])}, "
          f"aborted upstream {state['aborted']}, worker max running {state['max_running']}, "
          f"logged by the gateway {len(records)}")


# --- a worker dies mid-run ------------------------------------------------------------------


async def _one_request(client: httpx.AsyncClient, url: str, i: int,
                       timeout_s: float) -> tuple[str, str]:
    """Send request ``i``; classify how it ended. Returns (outcome, detail)."""
    # Mixed so that both kinds land on both workers (routing alternates between equals).
    stream = i % 3 == 0
    path = CHAT if i % 4 < 2 else COMPLETIONS
    body = (chat_body(f"req {i} LEN=40", stream=stream) if path == CHAT
            else {"model": "standin", "prompt": f"req {i} LEN=40", "stream": stream})
    try:
        async with asyncio.timeout(timeout_s):
            if not stream:
                resp = await client.post(url + path, json=body)
                if resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 40:
                    return "ok", ""
                return f"http_{resp.status_code}", resp.text[:200]
            async with client.stream("POST", url + path, json=body) as resp:
                text = (await resp.aread()).decode()
            if resp.status_code != 200:
                return f"http_{resp.status_code}", text[:200]
            events = sse_payloads(text)
            errors = [json.loads(e) for e in events if e.startswith('{"error"')]
            if errors:
                err = errors[-1]["error"]
                assert {"message", "type", "param", "code"} <= set(err)
                return "stream_error_event", err["code"]
            if events and events[-1] == "[DONE]":
                return "ok", ""
            return "stream_truncated_silently", text[-200:]
    except TimeoutError:
        return "client_timeout", ""
    except httpx.HTTPError as exc:
        return "transport_error", repr(exc)


async def test_worker_killed_mid_run_loses_no_request_and_is_used_again(
    standin_factory, gateway_process_factory
):
    a = standin_factory(token_delay_s=0.02)
    b = standin_factory(token_delay_s=0.02)
    gw = gateway_process_factory([a.url, b.url], max_sequences_per_worker=8, max_attempts=2,
                  stream_idle_timeout_s=3.0, first_byte_timeout_s=5.0)
    client_timeout_s = 20.0
    total = 64
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None)) as client:
        sem = asyncio.Semaphore(24)

        async def paced(i: int) -> tuple[str, str]:
            async with sem:
                return await _one_request(client, gw.url, i, client_timeout_s)

        tasks = [asyncio.ensure_future(paced(i)) for i in range(total)]
        await asyncio.sleep(1.0)
        assert a.state()["running"] > 0
        a.kill()  # SIGKILL: connections reset, nothing said
        killed_at = time.monotonic()
        results = await asyncio.gather(*tasks)
        finished_after_kill_s = time.monotonic() - killed_at

    outcomes = Counter(outcome for outcome, _ in results)
    # A stream's record is written as the gateway finishes it, just after its last byte.
    await asyncio.to_thread(wait_until, lambda: len(gw.request_log()) >= total, 5.0)
    records = gw.request_log()
    retried_ok = sum(1 for r in records if r["attempts"] > 1 and r["status"] == "ok")
    print(f"\nRELIABILITY worker death: {dict(outcomes)}; retried on the survivor and ok: "
          f"{retried_ok}; all done {finished_after_kill_s:.1f} s after the kill")
    # Every request ended in one of two clear outcomes: served (retried on the survivor if
    # it had not started streaming), or a started stream ended with an error event.
    assert set(outcomes) <= {"ok", "stream_error_event"}, results
    assert outcomes["ok"] + outcomes["stream_error_event"] == total
    assert retried_ok >= 1, records
    assert outcomes["stream_error_event"] >= 1
    # The log accounts for every request too.
    assert len(records) == total
    # Streams cut by the death are the only failures, and only ones that had started.
    assert all(r["status"] == "ok" or (r["stream"] and r["worker"] == a.url) for r in records)

    # The dead worker is out; when it comes back on its address it is used again.
    assert gw.metric("lengthwise_worker_healthy", worker=a.url) == 0
    a.start()
    assert await asyncio.to_thread(
        wait_until, lambda: gw.metric("lengthwise_worker_healthy", worker=a.url) == 1, 15.0)
    async with httpx.AsyncClient(timeout=30) as client:
        again = await asyncio.gather(*(client.post(gw.url + CHAT, json=chat_body("LEN=5"))
                                       for _ in range(12)))
    assert [r.status_code for r in again] == [200] * 12
    served_by_a = [r for r in a.state()["received"] if "LEN=5" in json.dumps(r)]
    assert served_by_a, "the restarted worker got no request"


# --- a worker stalls -----------------------------------------------------------------------


def test_stalled_worker_trips_the_timeout_and_the_health_check_takes_it_out(
    standin_factory, gateway_process_factory
):
    # Between idle workers routing breaks the tie by URL: make the stalled one the first pick.
    stalled, good = sorted([standin_factory(token_delay_s=0.0), standin_factory(token_delay_s=0.0)],
                           key=lambda w: w.url)
    gw = gateway_process_factory([stalled.url, good.url], first_byte_timeout_s=1.5,
                                 request_timeout_s=10, max_attempts=2,
                                 eject_after_failures=1, ejection_base_s=1.0,
                                 health_timeout_s=1.0)
    # The stalled worker still answers /health: only a real request shows it is stuck.
    stalled.control(mode="stall")

    with httpx.Client(base_url=gw.url, timeout=30) as client:
        start = time.monotonic()
        first = [client.post(CHAT, json=chat_body("LEN=3", stream=i % 2 == 0)) for i in range(4)]
        elapsed = time.monotonic() - start
    # Each request either went straight to the good worker or timed out on the stalled one
    # and was retried there; none waited much beyond one timeout.
    assert [r.status_code for r in first] == [200] * 4
    assert elapsed < 4 * 1.5 + 4.0
    hit_stall = [r for r in stalled.state()["received"] if "LEN=3" in json.dumps(r)]
    assert len(hit_stall) == 1  # taken out after its first timeout

    # It stays out while it stalls: /health passes, the one-token probe does not.
    for _ in range(5):
        assert gw.metric("lengthwise_worker_healthy", worker=stalled.url) == 0
        time.sleep(0.4)
    assert gw.health()["healthy_workers"] == 1

    # With no other worker, the client gets a clear error in bounded time: a stream after
    # the first-byte timeout; a non-streaming request (whose answer may legitimately take
    # longer) once the stall probe has found no token within that time as well.
    good.kill()
    assert wait_until(lambda: gw.health()["healthy_workers"] == 0, 10.0)
    stalled.control(mode="ok")
    assert wait_until(lambda: gw.metric("lengthwise_worker_healthy", worker=stalled.url) == 1, 10)
    stalled.control(mode="stall")
    for stream in (False, True):
        start = time.monotonic()
        resp = httpx.post(gw.url + CHAT, json=chat_body("LEN=3", stream=stream), timeout=30)
        assert resp.status_code == 503, resp.text
        err = resp.json()["error"]
        assert err["type"] == "service_unavailable_error" and err["message"]
        assert "retry-after" in resp.headers
        assert time.monotonic() - start < 1.5 + 1.5 + 2.0
        stalled.control(mode="ok")
        assert wait_until(
            lambda: gw.metric("lengthwise_worker_healthy", worker=stalled.url) == 1, 10)
        stalled.control(mode="stall")
    stalled.control(mode="ok")
