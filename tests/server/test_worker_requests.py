"""What the gateway sends a worker besides the body: the request id and the workers' API key."""

from __future__ import annotations

import httpx
from harness import chat_body, wait_until

CHAT = "/v1/chat/completions"


def test_the_gateways_request_id_reaches_the_worker(standin_factory, gateway_factory):
    worker = standin_factory()
    gw = gateway_factory([worker.url])
    ids = []
    for stream in (False, True):
        # A client's own X-Request-Id is not forwarded: the gateway's id is unique, and
        # it is the one the response, the request log and the worker's log share.
        resp = httpx.post(gw.url + CHAT, json=chat_body(stream=stream), timeout=10,
                          headers={"x-request-id": "client-chosen"})
        assert resp.status_code == 200
        ids.append(resp.headers["x-request-id"])
    assert all(i.startswith("lw-") for i in ids) and ids[0] != ids[1]
    assert worker.state()["request_ids"][-2:] == ids


def test_workers_started_with_an_api_key_are_used_with_it(standin_factory, gateway_factory):
    worker = standin_factory(api_key="worker-secret")
    assert httpx.get(worker.url + "/v1/models", timeout=5).status_code == 401  # as vLLM
    gw = gateway_factory([worker.url], worker_api_key="worker-secret")
    # The health probes (/v1/models) carry the key: the worker is in rotation.
    assert wait_until(lambda: gw.gateway.pool.healthy_ids() == {worker.url})
    for stream in (False, True):
        resp = httpx.post(gw.url + CHAT, json=chat_body(stream=stream), timeout=10)
        assert resp.status_code == 200, resp.text
    assert worker.state()["unauthorized"] == 1  # only the check above
    # The key never shows in the settings' text.
    assert "worker-secret" not in repr(gw.gateway.cfg)
