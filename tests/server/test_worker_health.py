"""Time bounds and taking workers out, through the gateway against stand-in workers: a long
non-streaming answer is not cut off, a hung worker is still found, and failed requests
take a worker out only after a run of them (and never the last one)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from harness import assert_openai_error, chat_body, wait_until

CHAT = "/v1/chat/completions"


def _taken_out(gw, worker: str, reason: str) -> float | None:
    return gw.registry.get_sample_value("lengthwise_worker_taken_out_total",
                                        {"worker": worker, "reason": reason})


def _received(worker, text: str) -> list[dict]:
    return [r for r in worker.state()["received"] if text in json.dumps(r)]


def test_a_long_non_streaming_answer_outlasts_the_first_byte_timeout_and_runs_once(
    standin_factory, gateway_factory
):
    # 200 tokens at 0.1 s each: 20 s to generate, four times the first-byte timeout.
    worker = standin_factory(token_delay_s=0.1)
    gw = gateway_factory([worker.url], first_byte_timeout_s=5.0)
    start = time.monotonic()
    resp = httpx.post(gw.url + CHAT, json=chat_body("LEN=200"), timeout=60)
    took = time.monotonic() - start
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 200
    assert took >= 19.0
    assert len(_received(worker, "LEN=200")) == 1  # generated once, not retried
    # The stall probes sent meanwhile got their token: the worker stayed in rotation.
    assert gw.gateway.pool.healthy_ids() == {worker.url}
    assert not gw.registry.get_sample_value("lengthwise_retries_total",
                                            {"reason": "worker_error"})


def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: httpx.post(url + CHAT, json=b, timeout=60), bodies))


def test_a_full_engine_is_busy_not_hung_when_the_stall_probe_cannot_get_a_slot(
    standin_factory, gateway_factory
):
    # One running slot, taken by answers of 6 s each: the one-token stall probe waits for
    # that slot (as in vLLM, a waiting request never starts while every slot is taken)
    # and gets no token within the 2 s first-byte timeout. The engine's generated-token
    # counter grew meanwhile, so the only worker stays and both answers come back, once.
    worker = standin_factory(token_delay_s=0.1)
    worker.control(max_num_seqs=1)
    gw = gateway_factory([worker.url], first_byte_timeout_s=2.0)
    resps = _post_all(gw.url, [chat_body(f"LEN=60 full {i}") for i in range(2)])
    assert [r.status_code for r in resps] == [200, 200], [r.text for r in resps]
    for i in range(2):
        assert len(_received(worker, f"LEN=60 full {i}")) == 1  # not retried
    assert not _taken_out(gw, worker.url, "stalled")
    assert gw.gateway.pool.healthy_ids() == {worker.url}


def test_the_last_worker_stays_when_its_engine_does_not_say_whether_it_progresses(
    standin_factory, gateway_factory
):
    # Without vLLM's generated-token counter a full engine looks hung; the last worker in
    # rotation is kept rather than leaving every request a 503.
    worker = standin_factory(token_delay_s=0.1)
    worker.control(max_num_seqs=1, metrics_progress=False)
    gw = gateway_factory([worker.url], first_byte_timeout_s=2.0)
    resp = httpx.post(gw.url + CHAT, json=chat_body("LEN=60 quiet"), timeout=60)
    assert resp.status_code == 200, resp.text
    assert len(_received(worker, "LEN=60 quiet")) == 1
    assert not _taken_out(gw, worker.url, "stalled")


def test_a_hung_worker_fails_its_non_streaming_attempt_which_is_retried_elsewhere(
    standin_factory, gateway_factory
):
    # Routing breaks ties by URL: make the hung worker the first pick.
    hung, good = sorted([standin_factory(), standin_factory()], key=lambda w: w.url)
    gw = gateway_factory([hung.url, good.url], first_byte_timeout_s=1.5,
                         health_timeout_s=1.0)
    hung.control(mode="stall")  # accepts requests, never answers; /health still passes
    start = time.monotonic()
    resp = httpx.post(gw.url + CHAT, json=chat_body("LEN=3 hung"), timeout=30)
    took = time.monotonic() - start
    assert resp.status_code == 200, resp.text
    assert len(_received(hung, "LEN=3 hung")) == 1 and len(_received(good, "LEN=3 hung")) == 1
    # Found by the stall probe: 1.5 s waiting, then 1.5 s for its one token.
    assert took < 1.5 + 1.5 + 2.5, took
    assert gw.gateway.pool.healthy_ids() == {good.url}
    assert _taken_out(gw, hung.url, "stalled") == 1
    hung.control(mode="ok")
    assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {hung.url, good.url})


def test_one_failed_request_does_not_take_out_the_only_worker(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url], health_interval_s=60)
    worker.control(mode="fail")
    for _ in range(8):
        err = assert_openai_error(httpx.post(gw.url + CHAT, json=chat_body(), timeout=10), 503)
        assert err["code"] == "upstream_unavailable"  # the worker's failure, not "no worker"
    # No probe has run since (60 s apart): the worker was never taken out, so it serves
    # as soon as it recovers.
    worker.control(mode="ok")
    assert httpx.post(gw.url + CHAT, json=chat_body(), timeout=10).status_code == 200


def test_a_run_of_failures_ejects_a_worker_for_a_while(standin_factory, gateway_factory):
    bad, good = sorted([standin_factory(), standin_factory()], key=lambda w: w.url)
    gw = gateway_factory([bad.url, good.url], eject_after_failures=3, ejection_base_s=2.0,
                         health_interval_s=0.2)
    bad.control(mode="fail")
    # One request at a time: routing picks ``bad`` (idle, first by URL) until it is out.
    for _ in range(6):
        assert httpx.post(gw.url + CHAT, json=chat_body("LEN=2 run"), timeout=10).status_code == 200
    assert len(_received(bad, "LEN=2 run")) == 3  # ejected after the third failure in a row
    assert gw.gateway.pool.healthy_ids() == {good.url}
    assert _taken_out(gw, bad.url, "ejected") == 1
    bad.control(mode="ok")
    # Out for the ejection time (2 s) although its probes pass; then back.
    time.sleep(1.0)
    assert gw.gateway.pool.healthy_ids() == {good.url}
    assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {bad.url, good.url}, 5.0)
