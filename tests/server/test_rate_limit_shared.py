"""Rate limits shared by gateway replicas through a real Redis server (Debian's
``redis-server``, started by the test): a key gets its limit once in total, not once per
replica; the in-process default stays per replica; a Redis that is configured but does
not answer stops the gateway from starting with a clear error."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from harness import chat_body, free_port, wait_until

from lengthwise.common.paths import REPO_ROOT

CHAT = "/v1/chat/completions"
KEY = {"authorization": "Bearer k1"}


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (scripts/test.sh installs Debian's package)"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    try:
        assert wait_until(lambda: _answers(client), 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _statuses(gateways, per_gateway: int) -> list[int]:
    return [httpx.post(gw.url + CHAT, json=chat_body(), headers=KEY, timeout=10).status_code
            for _ in range(per_gateway) for gw in gateways]


def test_two_replicas_share_one_request_limit_through_redis(
    standin_factory, gateway_factory, redis_url
):
    worker = standin_factory()
    settings = {"api_keys": ["k1", "k2"], "rate_limit_requests_per_min": 4,
                "rate_limit_redis_url": redis_url}
    replicas = [gateway_factory([worker.url], **settings) for _ in range(2)]
    statuses = _statuses(replicas, 4)  # 8 requests, alternating replicas, within a second
    assert sorted(statuses) == [200] * 4 + [429] * 4, statuses
    refused = httpx.post(replicas[1].url + CHAT, json=chat_body(), headers=KEY, timeout=10)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 15  # one request refills in 15 s
    # Another key has its own allowance.
    other = httpx.post(replicas[0].url + CHAT, json=chat_body(), timeout=10,
                       headers={"authorization": "Bearer k2"})
    assert other.status_code == 200


def test_two_replicas_share_one_token_limit_through_redis(
    standin_factory, gateway_factory, redis_url
):
    worker = standin_factory()
    settings = {"api_keys": ["k1"], "rate_limit_tokens_per_min": 100,
                "rate_limit_redis_url": redis_url}
    a, b = (gateway_factory([worker.url], **settings) for _ in range(2))
    # 120 tokens (prompt + completion) spent through replica a ...
    resp = httpx.post(a.url + CHAT, json=chat_body("LEN=118"), headers=KEY, timeout=30)
    assert resp.status_code == 200 and resp.json()["usage"]["total_tokens"] >= 100
    # ... leave nothing for replica b (the charge lands just after the response).
    assert wait_until(lambda: httpx.post(b.url + CHAT, json=chat_body(), headers=KEY,
                                         timeout=10).status_code == 429, 5)


def test_without_redis_each_replica_counts_alone(standin_factory, gateway_factory):
    """The documented arithmetic of the in-process default: N replicas, N times the limit."""
    worker = standin_factory()
    settings = {"api_keys": ["k1"], "rate_limit_requests_per_min": 3}
    replicas = [gateway_factory([worker.url], **settings) for _ in range(2)]
    assert sorted(_statuses(replicas, 4)) == [200] * 6 + [429] * 2


def test_a_redis_that_fails_later_admits_requests_and_counts_the_error(
    standin_factory, gateway_factory, tmp_path
):
    worker = standin_factory()
    binary = shutil.which("redis-server")
    assert binary
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        gw = gateway_factory([worker.url], api_keys=["k1"], rate_limit_requests_per_min=100,
                             rate_limit_redis_url=f"redis://127.0.0.1:{port}/0")
    finally:
        proc.kill()
        proc.wait(10)
    resp = httpx.post(gw.url + CHAT, json=chat_body(), headers=KEY, timeout=10)
    assert resp.status_code == 200
    assert gw.registry.get_sample_value("lengthwise_rate_limit_store_errors_total") >= 1


def test_serve_refuses_to_start_when_the_configured_redis_does_not_answer(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lengthwise.cli", "serve", "--worker", "http://127.0.0.1:9",
         "--port", str(free_port()), "--request-log", str(tmp_path / "r.jsonl")],
        cwd=REPO_ROOT, capture_output=True, timeout=120, check=False,
        env={**_clean_env(), "LENGTHWISE_RATE_LIMIT_REQUESTS_PER_MIN": "10",
             "LENGTHWISE_RATE_LIMIT_REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"})
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis"), err
    assert "hunter2" not in err  # the password is not printed


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if not k.startswith("LENGTHWISE_") or k == "LENGTHWISE_CACHE_DIR"}
