"""``lengthwise serve --worker URL`` as a real process: it serves, and SIGTERM drains it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
from harness import free_port, wait_until

from lengthwise.common.paths import REPO_ROOT


def test_serve_fronts_a_worker_and_drains_on_sigterm(standin_factory, tmp_path):
    worker = standin_factory(token_delay_s=0.02)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lengthwise.cli", "serve", "--worker", worker.url, "--port",
         str(port), "--request-log", str(tmp_path / "requests.jsonl"), "--log-level", "warning"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, 300, 0.3), proc.stdout.read1().decode() if proc.stdout else ""
        body = {"model": "standin", "messages": [{"role": "user", "content": "LEN=100"}]}
        result: dict = {}

        def long_request() -> None:
            result["resp"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)

        client = httpx.Client(timeout=10)
        assert client.get(f"{url}/health").status_code == 200  # keep-alive connection
        thread = threading.Thread(target=long_request)
        thread.start()
        assert wait_until(lambda: worker.state()["running"] == 1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New work on an open connection is refused with an OpenAI-format 503 ...
        refused = client.post(f"{url}/v1/chat/completions", json=body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        # ... while the accepted request finishes normally, and the process exits 0.
        thread.join(30)
        assert result["resp"].status_code == 200
        assert result["resp"].json()["usage"]["completion_tokens"] == 100
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_does_not_log_every_health_check(standin_factory, tmp_path):
    """At the default INFO level the log shows the gateway's own messages, not one line
    per health probe and metrics scrape (httpx logs each request at INFO)."""
    worker = standin_factory()
    port = free_port()
    env = {**os.environ, "LENGTHWISE_HEALTH_INTERVAL_S": "0.1",
           "LENGTHWISE_ENGINE_STATS_INTERVAL_S": "0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lengthwise.cli", "serve", "--worker", worker.url, "--port",
         str(port), "--request-log", str(tmp_path / "requests.jsonl"), "--log-level", "info"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200,
                          120, 0.3)
        body = {"model": "standin", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code == 200
        time.sleep(1.5)  # some 15 rounds of probes and scrapes
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "gateway ready" in output  # INFO lines do show
    assert "HTTP Request" not in output, output[-2000:]
