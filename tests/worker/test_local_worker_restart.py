"""``lengthwise serve`` with its own local vLLM worker: when that worker is killed with
SIGKILL (as the out-of-memory killer or a crash would), the gateway stays up, answers 503
meanwhile, restarts the worker, counts and logs it, and serves again by itself.

Slow (two vLLM start-ups, about two minutes on a 2-core machine); it needs the real vLLM
CPU build and the converted SmolLM2 model (``scripts/setup.sh``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from harness import free_port, wait_until

from lengthwise.common.paths import REPO_ROOT
from lengthwise.worker.local_model import SERVED_MODEL_NAME

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

BODY = {"model": SERVED_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "temperature": 0}


def _vllm_servers(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in parent.children(recursive=True):
        try:
            if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_serve_restarts_its_local_worker_after_a_kill_9(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lengthwise.cli", "serve", "--port", str(port),
             "--worker-port", str(free_port()), "--request-log",
             str(tmp_path / "requests.jsonl"), "--log-level", "warning"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    serve = psutil.Process(proc.pid)
    killed_group: list[psutil.Process] = []
    try:
        assert wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
                          360, 1.0), log_path.read_text()[-3000:]
        assert httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60).status_code == 200
        (victim,) = _vllm_servers(serve)
        killed_group = [victim, *victim.children(recursive=True)]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        statuses: list[int] = []

        def serves_again() -> bool:
            resp = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=60)
            statuses.append(resp.status_code)
            if resp.status_code != 200:
                assert resp.status_code == 503 and resp.json()["error"]["code"], resp.text
            return resp.status_code == 200

        assert wait_until(serves_again, 300, 2.0), log_path.read_text()[-3000:]
        print(f"\nserving again {time.monotonic() - killed_at:.0f} s after the kill; "
              f"statuses meanwhile: {sorted(set(statuses))}")
        assert 503 in statuses  # the gateway stayed up and said so while the worker was down
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'lengthwise_local_worker_restarts_total{reason="exited"} 1.0' in metrics
        assert "killed by SIGKILL" in log_path.read_text()
        # The killed worker's engine core went with it; only the new worker runs.
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                       for p in killed_group)
        (new_worker,) = _vllm_servers(serve)
        assert new_worker.pid != victim.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
        assert not new_worker.is_running()
    finally:
        if proc.poll() is None:
            for child in serve.children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(10)
