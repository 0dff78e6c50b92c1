"""Graceful shutdown: SIGTERM makes the gateway answer 503 to new requests while it
finishes the ones it accepted, then exit 0; a rolling restart of two gateways under
load loses no accepted request."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
from harness import assert_openai_error, chat_body, sse_payloads, wait_until

CHAT = "/v1/chat/completions"


async def _complete(client: httpx.AsyncClient, url: str, i: int, length: int) -> str:
    stream = i % 2 == 0
    body = chat_body(f"r{i} LEN={length}", stream=stream)
    if not stream:
        resp = await client.post(url + CHAT, json=body)
        if resp.status_code != 200:
            return f"http_{resp.status_code}"
        return "ok" if resp.json()["usage"]["completion_tokens"] == length else "short"
    async with client.stream("POST", url + CHAT, json=body) as resp:
        text = (await resp.aread()).decode()
    if resp.status_code != 200:
        return f"http_{resp.status_code}"
    events = sse_payloads(text)
    if events[-1] != "[DONE]" or any(e.startswith('{"error"') for e in events):
        return "stream_broken"
    return "ok"


async def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero(
    standin_factory, gateway_process_factory
):
    worker = standin_factory(token_delay_s=0.02)
    grace_s = 15.0
    gw = gateway_process_factory([worker.url], max_sequences_per_worker=8, shutdown_grace_s=grace_s)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:
        # 16 requests of 2 s each: 8 running, 8 queued behind them when SIGTERM arrives.
        accepted = [asyncio.ensure_future(_complete(client, gw.url, i, 100)) for i in range(16)]
        assert await asyncio.to_thread(wait_until, lambda: gw.health()["queue_depth"] == 8, 10)
        gw.terminate()
        signalled = time.monotonic()
        assert await asyncio.to_thread(wait_until, lambda: gw.health()["draining"], 5)

        # While draining: new requests are refused with a clear, retryable 503 ...
        refused = await client.post(gw.url + CHAT, json=chat_body("LEN=3"))
        err = assert_openai_error(refused, 503)
        assert err["code"] == "draining" and int(refused.headers["retry-after"]) >= 1
        health = await client.get(gw.url + "/health")
        assert health.status_code == 503 and health.json()["draining"] is True
        assert gw.proc.poll() is None

        # ... and every accepted one, queued ones included, finishes normally.
        outcomes = Counter(await asyncio.gather(*accepted))
    assert outcomes == {"ok": 16}, outcomes
    code = await asyncio.to_thread(gw.wait, grace_s + 10)
    took = time.monotonic() - signalled
    assert code == 0, gw.log_tail()
    assert took < grace_s, took
    assert worker.state()["aborted"] == 0
    print(f"\nRELIABILITY drain: 16 accepted requests finished, exit {code} after {took:.1f} s")


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh-connections", "pooled-connections"])
async def test_rolling_restart_of_two_gateways_loses_no_accepted_request(
    standin_factory, gateway_process_factory, pooled: bool
):
    workers = [standin_factory(token_delay_s=0.01), standin_factory(token_delay_s=0.01)]
    urls = [w.url for w in workers]
    settings = {"max_sequences_per_worker": 8, "shutdown_grace_s": 20.0}
    pool = [gateway_process_factory(urls, **settings), gateway_process_factory(urls, **settings)]
    tally: Counter = Counter()
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, c: int) -> None:
        """A client behind a simple load balancer that tries the gateways in turn.

        It retries only what it can prove was not accepted, as a real balancer must
        for a non-idempotent POST: a 503 (the gateway answered that it refused it) and
        ``httpx.ConnectError`` (no connection was made, so no byte of the request was
        sent). Any other failure (a reset or close after the request was sent, a
        timeout) leaves the client unable to tell whether the gateway acted on it:
        it is counted as lost and fails the test, because the gateway must never
        close on a request without answering it."""
        i = 0
        while not stop.is_set():
            i += 1
            for attempt in range(20):
                gw = pool[(c + i + attempt) % len(pool)]
                try:
                    outcome = await _complete(client, gw.url, c * 100000 + i, 20)
                except httpx.ConnectError:
                    tally["not_accepted_connect"] += 1
                    await asyncio.sleep(0.05)
                    continue
                except httpx.HTTPError as exc:
                    tally[f"lost_{type(exc).__name__}"] += 1
                    break
                if outcome == "http_503":
                    tally["not_accepted_503"] += 1
                    await asyncio.sleep(0.05)
                    continue
                tally[outcome] += 1
                break
            else:
                tally["gave_up"] += 1

    # Both kinds of balancer: one connection per request (every request races the
    # listener's close) and pooled keep-alive connections (requests race the close of
    # connections opened before the SIGTERM).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20 if pooled else 0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        loops = [asyncio.ensure_future(client_loop(client, c)) for c in range(8)]
        await asyncio.sleep(1.0)
        for k, old in enumerate(list(pool)):
            old.terminate()
            code = await asyncio.to_thread(old.wait, 30)
            assert code == 0, old.log_tail()
            # The replacement comes up on the same address (as a pod would behind its service).
            pool[k] = await asyncio.to_thread(
                lambda port=old.port: gateway_process_factory(urls, port=port, **settings))
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*loops)
    print(f"\nRELIABILITY rolling restart ({'pooled' if pooled else 'fresh'} connections): "
          f"{dict(tally)}")
    lost = {k: v for k, v in tally.items() if k not in
            ("ok", "not_accepted_connect", "not_accepted_503")}
    assert not lost, tally
    assert tally["ok"] > 50
    # Both restarts were noticed by the clients (the test exercised the drain).
    assert tally["not_accepted_503"] + tally["not_accepted_connect"] > 0
