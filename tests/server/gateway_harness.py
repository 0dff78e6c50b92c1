"""Helpers for gateway tests: stand-in worker processes and a gateway served over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from server.app import create_app
from server.config import GatewayConfig

STANDIN = Path(__file__).resolve().parent.parent / "standin_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class StandinWorker:
    """A stand-in vLLM server in its own process (tests/standin_worker.py)."""

    def __init__(self, model: str = "standin", token_delay_s: float = 0.005,
                 default_len: int = 8) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(STANDIN), "--port", str(self.port), "--model", model,
                     "--token-delay-s", str(token_delay_s), "--default-len", str(default_len)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StandinWorker:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_until(self._healthy, 20.0):
            raise RuntimeError("stand-in worker did not start")
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/models", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

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


class GatewayServer:
    """The gateway app served by uvicorn on a real port, in a background thread."""

    def __init__(self, cfg: GatewayConfig, predictor) -> None:
        self.registry = CollectorRegistry()
        self.app = create_app(cfg, predictor=predictor, registry=self.registry)
        self.port = cfg.port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> GatewayServer:
        self.thread.start()
        if not wait_until(lambda: self.server.started, 20.0):
            raise RuntimeError("gateway did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def gateway(self):
        return self.app.state.gateway


