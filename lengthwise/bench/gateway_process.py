"""The real gateway as a child process, for benchmarks: ``lengthwise serve`` with its
settings in a config file of its own (never in this process's environment)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

#: A benchmark measures ordering and throughput, not time-outs: a slow machine must not
#: turn long queue waits into 503s that drop requests from one arm only.
NO_TIMEOUTS: dict[str, float] = {
    "queue_timeout_s": 3600, "request_timeout_s": 3600, "first_byte_timeout_s": 3600,
    "stream_idle_timeout_s": 3600,
}


class GatewayProcess:
    """``lengthwise serve --worker URL --config <settings>`` until the block ends (SIGTERM).

    With ``worker_url=None`` it is the one-machine default instead: ``lengthwise serve``
    starts its own local vLLM worker, on ``worker_port``."""

    def __init__(self, worker_url: str | None, port: int, settings: Mapping[str, Any],
                 workdir: Path, name: str = "gateway", worker_port: int | None = None,
                 startup_timeout_s: float = 180.0) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.config.json"
        self.log_path = workdir / f"{name}.log"
        self.settings = dict(settings)
        self.startup_timeout_s = startup_timeout_s
        where = (["--worker", worker_url] if worker_url is not None
                 else ["--worker-port", str(worker_port or 0)])
        self.cmd = [sys.executable, "-m", "lengthwise.cli", "serve", *where,
                    "--port", str(port), "--log-level", "warning",
                    "--config", str(self.config_path)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.config_path.write_text(json.dumps(self.settings, default=str))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("gateway did not become healthy")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(os.getpgid(self.proc.pid), signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
                self.proc.wait(timeout=10)
