"""Auth: with keys configured every endpoint but /health (and /metrics when left open)
answers 401 to a missing or wrong key; keys are compared in constant time; per-key
rate limits in requests and tokens per minute answer 429 with Retry-After."""

from __future__ import annotations

import hmac

import httpx
import pytest
from harness import assert_openai_error, chat_body, wait_until

from server.auth import ApiKeyAuth
from server.errors import GatewayError

KEYS = ["sk-alpha-0123456789", "sk-bravo-9876543210"]
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer sk-wrong"},
    {"Authorization": "Bearer " + KEYS[0][:-1]},  # a prefix of a real key
    {"Authorization": "Bearer " + KEYS[0] + "x"},  # a real key plus one character
    {"Authorization": KEYS[0]},  # no Bearer scheme
    {"Authorization": "Basic " + KEYS[0]},
    {"Authorization": "Bearer"},
]


def _every_route(gw_url: str, key: str) -> list[tuple[str, str]]:
    schema = httpx.get(gw_url + "/openapi.json",
                       headers={"Authorization": f"Bearer {key}"}).json()
    routes = [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]
    # The framework's own pages are endpoints too, and so is a path nobody routed.
    return routes + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"),
                     ("GET", "/no/such/path")]


@pytest.mark.parametrize("metrics_require_auth", [True, False])
def test_every_endpoint_but_health_needs_a_key(
    standin_factory, gateway_process_factory, metrics_require_auth
):
    worker = standin_factory()
    gw = gateway_process_factory([worker.url], api_keys=KEYS,
                                 metrics_require_auth=metrics_require_auth)
    routes = _every_route(gw.url, KEYS[1])
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/metrics") in routes
    open_paths = {"/health"} if metrics_require_auth else {"/health", "/metrics"}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for method, path in routes:
            body = None
            if method == "POST":
                body = ({"model": "standin", "prompt": "hi", "max_tokens": 2}
                        if path == "/v1/completions" else chat_body(max_tokens=2))
            for headers in BAD_HEADERS:
                resp = client.request(method, path, json=body, headers=headers)
                if path in open_paths:
                    assert resp.status_code == 200, (method, path, resp.text[:200])
                else:
                    err = assert_openai_error(resp, 401)
                    assert err["type"] == "authentication_error"
                    assert resp.headers["www-authenticate"] == "Bearer"
            for key in KEYS:
                resp = client.request(method, path, json=body,
                                      headers={"Authorization": f"Bearer {key}"})
                assert resp.status_code == (404 if path == "/no/such/path" else 200), (
                    method, path, resp.text[:200])
    # Nothing unauthenticated reached the worker: only the keyed requests did.
    posts = sum(1 for m, _ in routes if m == "POST")
    assert len(worker.state()["received"]) == posts * len(KEYS)


def test_keys_are_compared_in_constant_time(monkeypatch):
    """Every configured key is compared with hmac.compare_digest, whether or not an earlier
    one matched, so neither which key matched nor how much of it leaks through timing."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    auth = ApiKeyAuth(["k1-aaaaaaaa", "k2-bbbbbbbb", "k3-cccccccc"])
    for presented, ok in [("k1-aaaaaaaa", True), ("k3-cccccccc", True), ("k1-aaaaaaab", False),
                          ("zz", False)]:
        calls.clear()
        if ok:
            assert auth.check(f"Bearer {presented}") == presented
        else:
            with pytest.raises(GatewayError):
                auth.check(f"Bearer {presented}")
        assert len(calls) == 3, (presented, calls)
        assert {c[0] for c in calls} == {presented.encode()}


def test_per_key_rate_limits_in_requests_and_tokens(standin_factory, gateway_process_factory):
    worker = standin_factory(token_delay_s=0.0)
    keys = KEYS + ["sk-charlie-5555", "sk-delta-7777"]
    gw = gateway_process_factory([worker.url], api_keys=keys, rate_limit_requests_per_min=5,
                                 rate_limit_tokens_per_min=100)
    alpha, bravo, charlie, delta = ({"Authorization": f"Bearer {k}"} for k in keys)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        # Requests per minute: 5 small requests (2 tokens each) pass, the 6th is refused.
        statuses = [client.post("/v1/chat/completions", json=chat_body(max_tokens=1),
                                headers=alpha).status_code for _ in range(5)]
        assert statuses == [200] * 5
        refused = client.post("/v1/completions", json={"model": "standin", "prompt": "x"},
                              headers=alpha)
        err = assert_openai_error(refused, 429)
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
        assert "requests per minute" in err["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 12  # one request refills per 12 s

        # Tokens per minute, charged from vLLM's usage (1 prompt + 40 completion tokens each),
        # streaming or not: 3 requests spend 123 of 100 tokens, the 4th is refused.
        served = 5
        for headers, stream in ((bravo, False), (charlie, True)):
            for _ in range(3):
                resp = client.post("/v1/chat/completions",
                                   json=chat_body("LEN=40", stream=stream), headers=headers)
                assert resp.status_code == 200, resp.text
                # A stream is charged when the gateway finishes it, which may be just after
                # the client has its last byte; its request-log record marks that moment.
                served += 1
                assert wait_until(lambda n=served: len(gw.request_log()) >= n, 5.0)
            refused = client.post("/v1/chat/completions", json=chat_body("LEN=40", stream=stream),
                                  headers=headers)
            err = assert_openai_error(refused, 429)
            assert err["code"] == "rate_limit_exceeded" and "tokens per minute" in err["message"]
            # The 23-token debt is repaid at 100 tokens a minute in about 14 s.
            assert 10 <= int(refused.headers["retry-after"]) <= 16, refused.headers

        # Each key has its own allowance.
        assert client.post("/v1/chat/completions", json=chat_body("LEN=40"),
                           headers=delta).status_code == 200
    assert len(worker.state()["received"]) == 5 + 3 + 3 + 1
