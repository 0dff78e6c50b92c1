"""``lengthwise serve --worker URL`` as a real process: it serves, and SIGTERM drains it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
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


# --- --predictor-dir: served as it is, or refused ---------------------------------------------


def _snapshot(folder) -> dict[str, tuple[int, str]]:
    # Recursive: an artifact may carry a second_stage/ folder of its own.
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _artifact_copy(tmp_path, name: str, **meta_changes) -> Path:
    """A copy of the trained artifact, its meta.json changed as given."""
    from predictor.artifact import default_artifact_dir

    folder = tmp_path / name
    shutil.copytree(default_artifact_dir(), folder)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    for dotted, value in meta_changes.items():
        *parents, leaf = dotted.split("__")
        node = meta
        for key in parents:
            node = node[key]
        node[leaf] = value
    meta_path.write_text(json.dumps(meta))
    return folder


def _serve(args: list[str], tmp_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lengthwise.cli", "serve", *args, "--request-log",
         str(tmp_path / "requests.jsonl"), "--log-level", "warning"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("kind", ["empty folder", "older artifact version",
                                  "missing model file", "corrupt booster"])
def test_serve_refuses_a_predictor_dir_it_cannot_serve_and_leaves_it_as_it_is(
    kind, standin_factory, tmp_path
):
    worker = standin_factory()
    if kind == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif kind == "older artifact version":
        folder = _artifact_copy(tmp_path, "old", artifact_version="3")
    elif kind == "missing model file":
        folder = _artifact_copy(tmp_path, "incomplete")
        (folder / "model.json").unlink()
    else:
        folder = _artifact_copy(tmp_path, "corrupt")
        (folder / "known_mean.lgb.txt").write_text("not a booster\n")
    before = _snapshot(folder)
    proc = _serve(["--worker", worker.url, "--port", str(free_port()), "--predictor-dir",
                   str(folder)], tmp_path)
    try:
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err_text = err.decode()
    assert proc.returncode not in (0, None)
    assert "Traceback" not in err_text, err_text[-3000:]
    # LightGBM's own loader logs its complaint about a corrupt booster file first.
    lines = [line for line in err_text.splitlines()
             if line.strip() and not line.startswith("[LightGBM]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err_text
    assert str(folder) in lines[0] and "predictor" in lines[0]
    assert _snapshot(folder) == before  # nothing trained into it, nothing touched


def test_serve_uses_a_no_holdout_artifact_exactly_as_trained(standin_factory, tmp_path):
    worker = standin_factory()
    # An artifact trained with --no-holdout (so on other rows than the default's).
    folder = _artifact_copy(tmp_path, "no-holdout", data__holdout__enabled=False)
    before = _snapshot(folder)
    port = free_port()
    proc = _serve(["--worker", worker.url, "--port", str(port), "--predictor-dir", str(folder)],
                  tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200,
                          120, 0.3), proc.stderr.read1().decode() if proc.stderr else ""
        body = {"model": "standin", "messages": [{"role": "user", "content": "hi"}]}
        resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert resp.status_code == 200
        assert float(resp.headers["x-lengthwise-predicted-tokens"]) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _snapshot(folder) == before
