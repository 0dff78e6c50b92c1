"""Real processes and servers for gateway tests: stand-in vLLM workers and the gateway.

Everything talks over real sockets. Stand-in vLLM servers (``standin_worker.py``)
run as their own processes and can be told to fail, stall or die, and report how
many requests they are running. The gateway runs one of two ways:

* ``GatewayProcess``: its own process (``gateway_main.py``: the same app and the
  same SIGTERM-draining server as ``lengthwise serve``), for tests that signal,
  kill or restart it;
* ``InProcessGateway``: served by uvicorn on a real port from a thread of the test
  process, for tests that look at its internal state (``.gateway``).

The fixtures that start and clean these up are in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lengthwise.worker.process import free_port
from predictor.types import LengthPredictor
from server.app import Gateway, create_app
from server.config import GatewayConfig

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STANDIN = TESTS / "standin_worker.py"
GATEWAY_MAIN = TESTS / "gateway_main.py"
MODEL = "standin"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0,
               interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds; an HTTP error counts as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    return predicate()


def _child_env() -> dict[str, str]:
    # The child must see the repo's packages and none of the developer's LENGTHWISE_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENGTHWISE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class StandinWorker:
    """A stand-in vLLM OpenAI server process; ``control()`` makes it misbehave."""

    def __init__(self, model: str = MODEL, token_delay_s: float = 0.005, default_len: int = 8,
                 port: int | None = None, api_key: str | None = None) -> None:
        self.model = model
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(STANDIN), "--port", str(self.port), "--model", model,
                     "--token-delay-s", str(token_delay_s), "--default-len", str(default_len)]
        if api_key is not None:
            self.args += ["--api-key", api_key]
        self.api_key = api_key
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StandinWorker:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=_child_env())
        if not wait_until(self._up, 30.0):
            raise RuntimeError(f"stand-in on {self.url} did not start")
        return self

    def _up(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200

    def control(self, **settings: Any) -> dict:
        return httpx.post(f"{self.url}/control", json=settings, timeout=5).json()

    def state(self) -> dict:
        return httpx.get(f"{self.url}/control", timeout=5).json()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()


class GatewayProcess:
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

    def start(self, wait_healthy: bool = True) -> GatewayProcess:
        self.config_path.write_text(json.dumps(self.config))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it until stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(GATEWAY_MAIN), str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=_child_env(), cwd=REPO,
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
        return read_metrics(self.url, headers)

    def metric(self, name: str, **labels: str) -> float:
        return read_metric(self.url, name, **labels)

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


def read_metrics(url: str, headers: dict[str, str] | None = None
                 ) -> dict[tuple[str, tuple], float]:
    """Every sample of a gateway's ``/metrics`` as ``{(name, sorted labels): value}``."""
    text = httpx.get(f"{url}/metrics", timeout=5, headers=headers).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def read_metric(url: str, name: str, **labels: str) -> float:
    """One sample of a gateway's ``/metrics`` (0 when absent)."""
    return read_metrics(url).get((name, tuple(sorted(labels.items()))), 0.0)


class InProcessGateway:
    """The gateway app served by uvicorn on a real port, in a background thread."""

    def __init__(self, cfg: GatewayConfig, predictor: LengthPredictor) -> None:
        self.registry = CollectorRegistry()
        self.app = create_app(cfg, predictor=predictor, registry=self.registry)
        self.port = cfg.port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> InProcessGateway:
        self.thread.start()
        if not wait_until(lambda: self.server.started, 20.0):
            raise RuntimeError("gateway did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def metric(self, name: str, **labels: str) -> float:
        return read_metric(self.url, name, **labels)

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway


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
