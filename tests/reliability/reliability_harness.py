"""Real processes for reliability tests: stand-in vLLM workers and the gateway itself.

Everything talks over real sockets: the gateway runs as its own process
(``gateway_main.py``, the same app and SIGTERM handling as ``lengthwise serve``)
in front of stand-in vLLM server processes (``tests/standin_worker.py``) that can
be told to fail, stall or die, and report how many requests they are running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STANDIN = REPO / "tests" / "standin_worker.py"
GATEWAY_MAIN = HERE / "gateway_main.py"
MODEL = "standin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0,
               interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    return predicate()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENGTHWISE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Standin:
    """A stand-in vLLM OpenAI server process; ``control()`` makes it misbehave."""

    def __init__(self, token_delay_s: float = 0.005, default_len: int = 8,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(STANDIN), "--port", str(self.port), "--model", MODEL,
                     "--token-delay-s", str(token_delay_s), "--default-len", str(default_len)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Standin:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=_env())
        if not wait_until(self._up, 30.0):
            raise RuntimeError(f"stand-in on {self.url} did not start")
        return self

    def _up(self) -> bool:
        return httpx.get(f"{self.url}/v1/models", timeout=0.5).status_code == 200

    def control(self, **settings: Any) -> dict:
        return httpx.post(f"{self.url}/control", json=settings, timeout=5).json()

    def state(self) -> dict:
        return httpx.get(f"{self.url}/control", timeout=5).json()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Gateway:
    """The gateway as a separate process on a free port, configured by a JSON file."""

    def __init__(self, workdir: Path, workers: list[str], port: int | None = None,
                 **settings: Any) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config = {
            "workers": workers, "host": "127.0.0.1", "port": self.port,
            # Probes every 0.2 s; on this shared 2-core machine a stand-in can be slow to
            # answer one, so one failed probe alone does not take a worker out.
            "health_interval_s": 0.2, "health_timeout_s": 2.0, "unhealthy_after_failures": 2,
            "request_log_path": str(workdir / f"requests-{self.port}.jsonl"),
            **settings,
        }
        self.config_path = workdir / f"gateway-{self.port}.json"
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_healthy: bool = True) -> Gateway:
        self.config_path.write_text(json.dumps(self.config))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it until stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(GATEWAY_MAIN), str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
        )
        check = self._healthy if wait_healthy else self._listening
        if not wait_until(check, 60.0, 0.1):
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.log_tail()}")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{self.log_tail()}")
        return httpx.get(f"{self.url}/health", timeout=1).status_code in (200, 503)

    def _healthy(self) -> bool:
        return self._listening() and httpx.get(f"{self.url}/health", timeout=1).status_code == 200

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def metrics(self, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
        """Every sample of ``/metrics`` as ``{(name, sorted labels): value}``."""
        text = httpx.get(f"{self.url}/metrics", timeout=5, headers=headers).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        want = tuple(sorted(labels.items()))
        return self.metrics().get((name, want), 0.0)

    def rss_bytes(self) -> int:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request_log(self) -> list[dict]:
        path = Path(self.config["request_log_path"])
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chat_body(text: str = "Hello there", **extra: Any) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def assert_openai_error(resp: httpx.Response, status: int | None = None) -> dict:
    if status is not None:
        assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    return err


def sse_payloads(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]
