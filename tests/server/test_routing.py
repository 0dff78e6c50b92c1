"""Where requests go, through the gateway against stand-in workers: only to workers that
serve the requested model, and past a queued request that waits for one worker."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from harness import assert_openai_error, chat_body, wait_until

CHAT = "/v1/chat/completions"


def _texts(worker) -> list[str]:
    return [json.dumps(r.get("messages") or r.get("prompt")) for r in worker.state()["received"]]


async def test_each_request_reaches_a_worker_serving_its_model(standin_factory,
                                                               gateway_factory):
    alpha, beta = standin_factory(model="alpha"), standin_factory(model="beta")
    gw = gateway_factory([alpha.url, beta.url])
    bodies = [{**chat_body(f"{model} #{i}"), "model": model}
              for i in range(8) for model in ("alpha", "beta")]
    async with httpx.AsyncClient(timeout=30) as client:
        models = (await client.get(gw.url + "/v1/models")).json()
        assert sorted(m["id"] for m in models["data"]) == ["alpha", "beta"]
        resps = await asyncio.gather(*(client.post(gw.url + CHAT, json=b) for b in bodies))
    # A stand-in answers another model's request with 404, as vLLM does.
    assert [r.status_code for r in resps] == [200] * len(bodies)
    assert all(r.json()["model"] == b["model"] for r, b in zip(resps, bodies))
    assert all("alpha #" in t for t in _texts(alpha)) and len(_texts(alpha)) == 8
    assert all("beta #" in t for t in _texts(beta)) and len(_texts(beta)) == 8

    # A model whose only worker is down is unavailable (503), not unknown (404), and the
    # other model is served as before.
    beta.kill()
    assert await asyncio.to_thread(
        wait_until, lambda: gw.gateway.pool.healthy_ids() == {alpha.url})
    async with httpx.AsyncClient(timeout=10) as client:
        err = assert_openai_error(
            await client.post(gw.url + CHAT, json={**chat_body(), "model": "beta"}), 503)
        assert err["code"] == "no_healthy_worker"
        ok = await client.post(gw.url + CHAT, json={**chat_body(), "model": "alpha"})
    assert ok.status_code == 200


async def test_a_retry_that_waits_for_one_worker_does_not_hold_up_the_others(
    standin_factory, gateway_factory
):
    """A request failed on ``b`` waits to be retried on ``a``, which is busy; a request
    behind it in the (fcfs) queue goes to ``b`` at once instead of waiting with it."""
    a, b = sorted([standin_factory(token_delay_s=0.01), standin_factory(token_delay_s=0.01)],
                  key=lambda w: w.url)
    gw = gateway_factory([a.url, b.url], policy="fcfs", max_sequences_per_worker=1)
    b.control(fail_marker="FAILS-ON-B")
    async with httpx.AsyncClient(timeout=60) as client:
        # Both idle: routing breaks the tie by URL, so the 3 s request runs on ``a``.
        blocker = asyncio.ensure_future(client.post(gw.url + CHAT, json=chat_body("LEN=300")))
        assert await asyncio.to_thread(wait_until, lambda: a.state()["running"] == 1)
        retried = asyncio.ensure_future(
            client.post(gw.url + CHAT, json=chat_body("LEN=5 FAILS-ON-B")))
        # It failed on ``b`` and now waits at the head of the queue for ``a``.
        assert await asyncio.to_thread(
            wait_until, lambda: gw.gateway.dispatcher.queue_depth() == 1)
        start = time.monotonic()
        behind = await client.post(gw.url + CHAT, json=chat_body("LEN=5 behind"))
        took = time.monotonic() - start
        assert behind.status_code == 200
        assert not blocker.done()  # it did not wait for ``a`` to free
        assert took < 1.5, took
        assert any("behind" in t for t in _texts(b))
        first, second = await asyncio.gather(blocker, retried)
    assert first.status_code == 200 and second.status_code == 200
    assert any("FAILS-ON-B" in t for t in _texts(a))  # the retry ran on ``a``, after the blocker
