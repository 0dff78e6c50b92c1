"""The gateway over real HTTP in front of stand-in vLLM processes: API shape, errors,
retries, health, disconnects, queueing, auth, metrics and the request log."""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import pytest
from harness import free_port, wait_until

from server.request_log import read_request_log

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


#: prompts the real predictor gives clearly different lengths, for the ordering tests
VARIED_LENGTH_PROMPTS = [
    "Write a very long and detailed essay about the history of Rome, with many sections.",
    "Say yes.",
    "List ten fruits with a one-paragraph description of each.",
    "What is 2+2? Answer with one number.",
    "Explain in depth how a compiler works, covering every stage thoroughly.",
    "Name one color.",
    "Translate 'good morning' into French.",
    "Write a short story about a lighthouse keeper and a storm, in five chapters.",
    "Is the sky blue? Yes or no.",
    "Describe the water cycle step by step for a school textbook chapter.",
]


def chat_body(model: str = "standin", text: str = "Hello there", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def assert_openai_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def sse_events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]


# --- API shape ----------------------------------------------------------------------------


def test_non_streaming_bodies_pass_through_unchanged_with_prediction_headers(shared_gateway):
    _, gw = shared_gateway
    for path, body in [(CHAT, chat_body(text="hi LEN=5", max_tokens=3)),
                       (COMPLETIONS, {"model": "standin", "prompt": "hi LEN=2"})]:
        resp = httpx.post(gw.url + path, json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert float(resp.headers["x-lengthwise-predicted-tokens"]) >= 1
        assert float(resp.headers["x-lengthwise-queue-ms"]) >= 0
        if path == CHAT:
            assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
            assert data["choices"][0]["finish_reason"] == "length"
        else:
            assert data["usage"]["completion_tokens"] == 2
            assert data["choices"][0]["finish_reason"] == "stop"


def test_streaming_relays_sse_and_adds_usage_only_when_asked(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url])
    plain = httpx.post(gw.url + CHAT, json=chat_body(text="LEN=4", stream=True), timeout=10)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/event-stream")
    assert "x-lengthwise-predicted-tokens" in plain.headers
    events = sse_events(plain.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == " t0 t1 t2 t3"

    with_usage = httpx.post(
        gw.url + COMPLETIONS,
        json={"model": "standin", "prompt": "LEN=3", "stream": True,
              "stream_options": {"include_usage": True}}, timeout=10)
    events = sse_events(with_usage.text)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3

    # The log has the real length of both, although the first client did not ask for usage.
    log_path = gw.gateway.cfg.request_log_path
    assert wait_until(lambda: len(read_request_log(log_path)) == 2)
    records = read_request_log(log_path)
    assert [r["completion_tokens"] for r in records] == [4, 3]
    assert all(r["status"] == "ok" and r["ttft_s"] is not None for r in records)
    assert all(r["predicted_tokens"] >= 1 and r["prompt_tokens"] >= 1 for r in records)


def test_models_and_health(standin_factory, gateway_factory):
    worker = standin_factory(model="m1")
    gw = gateway_factory([worker.url])
    models = httpx.get(gw.url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["m1"]
    health = httpx.get(gw.url + "/health")
    assert health.status_code == 200 and health.json()["healthy_workers"] == 1


def test_extra_fields_priority_and_edt_reach_vllm(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url], edt_theta=0.5, edt_n=0.8)
    ok = lambda body: httpx.post(gw.url + CHAT, json=body, timeout=10).status_code == 200
    assert ok(chat_body(top_k=5, min_p=0.1, repetition_penalty=1.1, seed=3, user="u"))
    assert ok(chat_body(edt={"theta": 1.5, "n": 0.3}, temperature=0.9))
    assert ok(chat_body(vllm_xargs={"edt_theta": 0.0, "other": 1}))
    assert ok(chat_body(vllm_xargs={"other": "x"}))
    received = worker.state()["received"][-4:]
    assert received[0]["top_k"] == 5 and received[0]["min_p"] == 0.1 and received[0]["user"] == "u"
    assert received[0]["vllm_xargs"] == {"edt_theta": 0.5, "edt_n": 0.8}  # gateway default
    assert "edt" not in received[1]
    assert received[1]["vllm_xargs"] == {"edt_theta": 1.5, "edt_n": 0.3}
    assert received[1]["temperature"] == 0.9
    assert received[2]["vllm_xargs"] == {"edt_theta": 0.0, "other": 1}  # the client's own
    assert received[3]["vllm_xargs"] == {"edt_theta": 0.5, "edt_n": 0.8, "other": "x"}
    assert all(isinstance(r["priority"], int) and r["priority"] >= 0 for r in received)


def test_edt_n_defaults_to_the_papers_n(standin_factory, gateway_factory):
    """``edt: {"theta": 0.5}`` is a complete request (N = 0.8), and so is a gateway-wide
    ``edt_theta`` without ``edt_n``."""
    worker = standin_factory()
    gw = gateway_factory([worker.url], edt_theta=0.25)
    resp = httpx.post(gw.url + CHAT, json=chat_body(edt={"theta": 0.5}), timeout=10)
    assert resp.status_code == 200, resp.text
    assert httpx.post(gw.url + CHAT, json=chat_body(), timeout=10).status_code == 200
    own, default = worker.state()["received"][-2:]
    assert own["vllm_xargs"] == {"edt_theta": 0.5, "edt_n": 0.8}
    assert default["vllm_xargs"] == {"edt_theta": 0.25, "edt_n": 0.8}


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe\x00garbage", 400),
        (b"", 400),
        (b"[1, 2]", 400),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400),  # no model
        (b'{"model": "standin", "messages": []}', 400),
        (b'{"model": "standin", "messages": "hello"}', 400),
        (b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], "n": "2"}', 400),
        (b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], "n": 10000}', 400),
        ((b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], '
          b'"max_tokens": 1000000000}'), 400),
        (b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
         400),
        (b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         400),
        ((b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], '
          b'"temperature": NaN}'), 400),
        ((b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], '
          b'"edt": {"theta": -1, "n": 0.5}}'), 400),
        ((b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], '
          b'"edt": {"theta": 1, "n": 1.0}}'), 400),
        ((b'{"model": "standin", "messages": [{"role": "user", "content": "x"}], '
          b'"edt": {"n": 0.5}}'), 400),  # theta is the one required EDT field
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404),
    ],
)
def test_bad_input_gets_an_openai_error_never_a_500(shared_gateway, content, status):
    _, gw = shared_gateway
    resp = httpx.post(gw.url + CHAT, content=content,
                      headers={"content-type": "application/json"}, timeout=10)
    assert_openai_error(resp, status)


def test_oversized_body_gets_413(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url], max_body_bytes=4096)
    resp = httpx.post(gw.url + CHAT, json=chat_body(text="x" * 10_000), timeout=10)
    assert_openai_error(resp, 413)


def test_unknown_route_and_method_are_openai_errors(shared_gateway):
    _, gw = shared_gateway
    assert_openai_error(httpx.get(gw.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(gw.url + CHAT), 404)


# --- workers: retries, health, timeouts -------------------------------------------------------


async def test_failing_worker_is_retried_elsewhere_and_taken_out(
    standin_factory, gateway_factory
):
    good, bad = standin_factory(token_delay_s=0.02), standin_factory()
    bad.control(mode="fail")
    gw = gateway_factory([good.url, bad.url], health_interval_s=60,
                         max_sequences_per_worker=1, eject_after_failures=1)
    async with httpx.AsyncClient(timeout=30) as client:
        resps = await asyncio.gather(*(
            client.post(gw.url + CHAT, json=chat_body(stream=i % 2 == 0)) for i in range(6)
        ))
    assert [r.status_code for r in resps] == [200] * 6
    assert len(bad.state()["received"]) >= 1  # it was tried ...
    assert good.state()["completed"] == 6  # ... and everything was served by the other
    assert bad.url not in gw.gateway.pool.healthy_ids()


def test_dead_worker_is_skipped_and_used_again_when_back(standin_factory, gateway_factory):
    a, b = standin_factory(), standin_factory()
    gw = gateway_factory([a.url, b.url])
    b.kill()
    for _ in range(4):
        assert httpx.post(gw.url + CHAT, json=chat_body(), timeout=10).status_code == 200
    assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {a.url})
    b.start()
    assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {a.url, b.url})
    a.control(mode="fail")
    for _ in range(3):
        assert httpx.post(gw.url + CHAT, json=chat_body(), timeout=10).status_code == 200
    assert b.state()["completed"] >= 3


def test_stalled_worker_trips_the_request_timeout_and_the_stall_probe(
    standin_factory, gateway_factory
):
    worker = standin_factory()
    gw = gateway_factory([worker.url], request_timeout_s=1.0, first_byte_timeout_s=1.0,
                         max_attempts=1, health_timeout_s=0.5)
    worker.control(mode="stall")
    resp = httpx.post(gw.url + CHAT, json=chat_body(stream=True), timeout=10)
    err = assert_openai_error(resp, 503)
    assert err["code"] == "upstream_unavailable"
    # One time-out does not take out the only worker; the stall probe that follows it
    # (one token, within the first-byte timeout) shows the engine is hung, and does.
    assert wait_until(lambda: not gw.gateway.pool.healthy_ids(), timeout_s=5)
    err = assert_openai_error(httpx.post(gw.url + CHAT, json=chat_body(), timeout=10), 503)
    assert err["code"] == "no_healthy_worker"
    # /health still answers, but a worker taken out returns only once it generates again.
    assert not wait_until(lambda: bool(gw.gateway.pool.healthy_ids()), timeout_s=1.5)
    worker.control(mode="ok")
    assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {worker.url})
    assert httpx.post(gw.url + CHAT, json=chat_body(), timeout=10).status_code == 200


def test_no_healthy_worker_gets_503(gateway_factory):
    gw = gateway_factory([f"http://127.0.0.1:{free_port()}"])
    resp = httpx.post(gw.url + CHAT, json=chat_body(), timeout=10)
    err = assert_openai_error(resp, 503)
    assert err["code"] == "no_healthy_worker"
    assert httpx.get(gw.url + "/health").status_code == 503


def test_worker_dying_mid_stream_ends_the_stream_with_an_error_event(
    standin_factory, gateway_factory
):
    worker = standin_factory(token_delay_s=0.02)
    gw = gateway_factory([worker.url])
    worker.control(mode="die_mid_stream")
    resp = httpx.post(gw.url + CHAT, json=chat_body(text="LEN=20", stream=True), timeout=10)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"
    assert wait_until(lambda: gw.gateway.dispatcher.in_flight == 0)


# --- queueing ---------------------------------------------------------------------------------


async def test_full_queue_gets_429_with_retry_after(standin_factory, gateway_factory):
    worker = standin_factory(token_delay_s=0.05)
    gw = gateway_factory([worker.url], max_sequences_per_worker=1, queue_capacity=2)
    async with httpx.AsyncClient(timeout=30) as client:
        resps = await asyncio.gather(*(
            client.post(gw.url + CHAT, json=chat_body(text="LEN=10")) for _ in range(6)
        ))
    statuses = sorted(r.status_code for r in resps)
    assert statuses.count(200) == 3 and statuses.count(429) == 3
    for r in resps:
        if r.status_code == 429:
            assert_openai_error(r, 429)
            assert int(r.headers["retry-after"]) >= 1
    assert worker.state()["max_running"] == 1


async def test_queued_requests_dispatch_in_policy_order(standin_factory, gateway_factory):
    """While one request holds the only slot, the rest leave the queue shortest-predicted
    first; the worker sees them in that order, with non-decreasing vLLM priorities."""
    worker = standin_factory(token_delay_s=0.01)
    gw = gateway_factory([worker.url], max_sequences_per_worker=1, policy="sjf")
    texts = VARIED_LENGTH_PROMPTS[:6]
    async with httpx.AsyncClient(timeout=60) as client:
        blocker = asyncio.ensure_future(
            client.post(gw.url + CHAT, json=chat_body(text="LEN=400")))
        assert await asyncio.to_thread(wait_until, lambda: worker.state()["running"] == 1)
        tasks = []
        for i, text in enumerate(texts):
            tasks.append(asyncio.ensure_future(
                client.post(gw.url + CHAT, json=chat_body(text=f"{text} LEN=1", seed=i))))
            await asyncio.sleep(0.05)
        resps = await asyncio.gather(blocker, *tasks)
    assert all(r.status_code == 200 for r in resps)
    predicted = {json.dumps(chat_body(text=f"{t} LEN=1", seed=i)["messages"]):
                 float(r.headers["x-lengthwise-predicted-tokens"])
                 for i, (t, r) in enumerate(zip(texts, resps[1:]))}
    received = [r for r in worker.state()["received"] if "LEN=1" in r["messages"][0]["content"]]
    order = [predicted[json.dumps(r["messages"])] for r in received]
    assert order == sorted(order)
    # Each request's vLLM priority follows its prediction: a shorter prediction gets a
    # strictly smaller (sooner) priority, so vLLM's own queue keeps the gateway's order.
    # (A constant priority, or one that ignores the prediction, fails this.)
    priorities = [r["priority"] for r in received]
    assert len(set(order)) == len(order) == len(texts)  # the predictions differ
    for (p1, q1), (p2, q2) in itertools.combinations(zip(order, priorities), 2):
        assert (p1 < p2) == (q1 < q2), (order, priorities)


async def test_a_burst_is_ordered_by_prediction_beyond_the_free_slots(standin_factory,
                                                                      gateway_factory):
    """All requests at once: only as many as there are free slots skip the queue (and are
    predicted after dispatch); every other one is predicted first and leaves the queue
    shortest-predicted first. Arrivals of a burst are all handled before any dispatch
    task runs, so a free-slot check that did not take the slot let most of them skip."""
    worker = standin_factory(token_delay_s=0.02)
    gw = gateway_factory([worker.url], max_sequences_per_worker=2, policy="sjf")
    texts = VARIED_LENGTH_PROMPTS
    bodies = [chat_body(text=f"{text} LEN=10", seed=i) for i, text in enumerate(texts)]
    async with httpx.AsyncClient(timeout=60) as client:
        resps = await asyncio.gather(*(client.post(gw.url + CHAT, json=b) for b in bodies))
    assert all(r.status_code == 200 for r in resps)
    predicted = {json.dumps(b["messages"]): float(r.headers["x-lengthwise-predicted-tokens"])
                 for b, r in zip(bodies, resps)}
    received = [predicted[json.dumps(r["messages"])] for r in worker.state()["received"]]
    assert len(received) == len(texts)
    assert received[2:] == sorted(received[2:])
    assert len(set(received)) >= 5  # the predictions really differ
    queued = [r for r in resps if float(r.headers["x-lengthwise-queue-ms"]) > 50]
    assert len(queued) >= len(texts) - 2 - 1  # (one may get a slot just as it frees)


# --- disconnects ------------------------------------------------------------------------------


async def test_client_disconnects_abort_upstream_and_free_the_gateway(
    standin_factory, gateway_factory
):
    worker = standin_factory(token_delay_s=0.02)
    gw = gateway_factory([worker.url], max_sequences_per_worker=4)

    async def stream_then_leave(client: httpx.AsyncClient, events_before_leaving: int) -> None:
        body = chat_body(text="LEN=500", stream=True)
        async with client.stream("POST", gw.url + CHAT, json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen >= events_before_leaving:
                        return

    async def wait_then_leave(client: httpx.AsyncClient) -> None:
        # Non-streaming; most of these are still queued when the client gives up.
        try:
            await client.post(gw.url + CHAT, json=chat_body(text="LEN=500"), timeout=0.3)
        except httpx.TimeoutException:
            pass

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(stream_then_leave(client, 1 + i % 5) for i in range(10)),
                             *(wait_then_leave(client) for _ in range(6)))
    assert await asyncio.to_thread(
        wait_until, lambda: worker.state()["running"] == 0 and gw.gateway.dispatcher.in_flight == 0
    ), (f"worker running {worker.state()['running']}, gateway in flight "
        f"{gw.gateway.dispatcher.in_flight}, queued {gw.gateway.dispatcher.queue_depth()}")
    state = worker.state()
    assert state["completed"] == 0
    assert state["aborted"] == len(state["received"])
    assert gw.gateway.dispatcher.queue_depth() == 0
    metrics = (await asyncio.to_thread(httpx.get, gw.url + "/metrics")).text
    assert f'lengthwise_worker_in_flight{{worker="{worker.url}"}} 0.0' in metrics
    records = read_request_log(gw.gateway.cfg.request_log_path)
    assert len(records) == 16 and {r["status"] for r in records} == {"client_disconnected"}


# --- auth -------------------------------------------------------------------------------------


def test_api_keys_guard_every_endpoint_but_health(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url], api_keys=["k-one", "k-two"])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-one"}):
        assert_openai_error(httpx.post(gw.url + CHAT, json=chat_body(), headers=headers), 401)
        assert_openai_error(httpx.get(gw.url + "/v1/models", headers=headers), 401)
    good = {"Authorization": "Bearer k-two"}
    assert httpx.post(gw.url + CHAT, json=chat_body(), headers=good).status_code == 200
    assert httpx.get(gw.url + "/v1/models", headers=good).status_code == 200
    assert httpx.get(gw.url + "/health").status_code == 200


def test_without_keys_any_authorization_header_is_accepted(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url])
    for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "junk"}):
        assert httpx.post(gw.url + CHAT, json=chat_body(), headers=headers).status_code == 200


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_export_latency_tokens_predictions_and_worker_state(
    standin_factory, gateway_factory
):
    worker = standin_factory()
    gw = gateway_factory([worker.url], engine_stats_interval_s=0.2)
    httpx.post(gw.url + CHAT, json=chat_body(text="LEN=4", stream=True))
    httpx.post(gw.url + CHAT, json=chat_body(text="LEN=4"))
    httpx.post(gw.url + CHAT, json=chat_body(model="nope"))
    assert wait_until(lambda: "lengthwise_worker_kv_cache_usage_ratio{" in
                      httpx.get(gw.url + "/metrics").text)
    text = httpx.get(gw.url + "/metrics").text
    for line in [
        'lengthwise_requests_total{endpoint="chat",policy="sjf-aged",status="ok"} 2.0',
        "lengthwise_completion_tokens_total 8.0",
        "lengthwise_prompt_tokens_total 2.0",
        "lengthwise_predicted_tokens_count 2.0",
        "lengthwise_prediction_error_ratio_count 2.0",
        'lengthwise_request_ttft_seconds_count{endpoint="chat",policy="sjf-aged"} 1.0',
        'lengthwise_request_e2e_seconds_count{endpoint="chat",policy="sjf-aged"} 2.0',
        'lengthwise_queue_wait_seconds_count{policy="sjf-aged"} 2.0',
        'lengthwise_queue_depth{policy="sjf-aged"} 0.0',
        f'lengthwise_worker_healthy{{worker="{worker.url}"}} 1.0',
    ]:
        assert line in text, line
