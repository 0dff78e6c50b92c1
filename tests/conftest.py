"""Shared test fixtures.

``vllm_worker`` (session scope) is ONE real vLLM CPU worker for the whole test
run: SmolLM2-135M-Instruct with the EDT logits processor loaded and
``--scheduling-policy priority``, on a free local port. It yields a
``LiveWorker(base_url, model)`` and stops the worker (whole process group) at the
end of the session. Tests that use it are marked ``vllm`` automatically, so
``pytest -m "not vllm"`` skips them.

Set ``LENGTHWISE_TEST_WORKER_URL`` (e.g. ``http://127.0.0.1:8100``) to reuse an
already-running worker instead of starting one; its model name is read from
``/v1/models`` unless ``LENGTHWISE_TEST_WORKER_MODEL`` says it, and its EDT
metrics URL (``LENGTHWISE_EDT_METRICS_PORT``) from ``LENGTHWISE_TEST_WORKER_EDT_METRICS_URL``.

If the worker cannot start, every test using it fails with the worker's log tail.

The gateway and stand-in fixtures (``standin_factory``, ``gateway_process_factory``,
``gateway_factory``, ``shared_gateway``, ``length_predictor``) start real processes
and servers from ``harness.py``, the one test harness of every folder.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

WORKER_URL_ENV = "LENGTHWISE_TEST_WORKER_URL"
WORKER_MODEL_ENV = "LENGTHWISE_TEST_WORKER_MODEL"
WORKER_EDT_METRICS_ENV = "LENGTHWISE_TEST_WORKER_EDT_METRICS_URL"


@dataclass(frozen=True)
class LiveWorker:
    base_url: str
    """Root URL without ``/v1``, e.g. ``http://127.0.0.1:43121``."""
    model: str
    """Served model name to put in requests."""
    edt_metrics_url: str | None = None
    """The EDT processor's ``/metrics`` (applied temperatures), when this run started the worker."""

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"


def _served_model(base_url: str) -> str:
    with urllib.request.urlopen(f"{base_url}/v1/models", timeout=10) as resp:
        return json.load(resp)["data"][0]["id"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "vllm_worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def vllm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorker]:
    from lengthwise.worker.process import (
        WorkerConfig,
        WorkerProcess,
        WorkerStartError,
        free_port,
        is_healthy,
    )

    reuse = os.environ.get(WORKER_URL_ENV, "").rstrip("/")
    if reuse:
        if not is_healthy(reuse, timeout_s=5):
            pytest.fail(f"{WORKER_URL_ENV}={reuse} does not answer /health")
        yield LiveWorker(reuse, os.environ.get(WORKER_MODEL_ENV) or _served_model(reuse),
                         os.environ.get(WORKER_EDT_METRICS_ENV) or None)
        return

    from lengthwise.worker.local_model import LocalModelError, prepare_local_model

    try:
        model = prepare_local_model()
    except LocalModelError as exc:
        pytest.fail(f"cannot prepare the local model: {exc}")
    log_path = tmp_path_factory.mktemp("vllm-worker") / "worker.log"
    config = WorkerConfig(
        model_path=model.path,
        served_model_name=model.name,
        port=free_port(),
        max_num_seqs=32,
        kv_cache_space_gib=1,
        log_path=log_path,
        edt_metrics_port=free_port(),
    )
    worker = WorkerProcess(config)
    try:
        worker.start()
    except WorkerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield LiveWorker(worker.base_url, config.served_model_name, config.edt_metrics_url)
    finally:
        worker.stop()


# --- Gateway and stand-in fixtures (classes in harness.py) -----------------------------

T = TypeVar("T")


@pytest.fixture(scope="session")
def length_predictor():
    """The real trained predictor (trained once from CASTILLO if the cache has none)."""
    from predictor.api import load_served_predictor

    return load_served_predictor()


def _cleaned_up(
    start: Callable[..., T], clean_up: Callable[[T], None]
) -> Iterator[Callable[..., T]]:
    """The body of a factory fixture: the test calls ``start``; whatever it started is
    cleaned up after the test."""
    started: list[T] = []

    def make(*args: Any, **kwargs: Any) -> T:
        thing = start(*args, **kwargs)
        started.append(thing)
        return thing

    yield make
    for thing in started:
        clean_up(thing)


@pytest.fixture
def standin_factory() -> Iterator:
    """``standin_factory(**kwargs)`` starts a stand-in worker process; all are killed after."""
    from harness import StandinWorker

    yield from _cleaned_up(lambda **kwargs: StandinWorker(**kwargs).start(), StandinWorker.kill)


@pytest.fixture
def gateway_process_factory(tmp_path: Path) -> Iterator:
    """``gateway_process_factory(workers, wait_healthy=True, **settings)`` starts the gateway
    as its own process (the stand-ins' oracle predictor); those still running are killed after."""
    from harness import GatewayProcess

    def start(workers: list[str], wait_healthy: bool = True, **settings: Any) -> GatewayProcess:
        return GatewayProcess(tmp_path, workers, **settings).start(wait_healthy=wait_healthy)

    yield from _cleaned_up(start, GatewayProcess.stop)


@pytest.fixture
def gateway_factory(length_predictor, tmp_path: Path) -> Iterator:
    """``gateway_factory(workers, **settings)`` serves the gateway (real trained predictor)
    from a thread of this process; all are stopped after."""
    from harness import InProcessGateway, free_port

    from server.config import GatewayConfig

    def start(workers: list[str], **settings: Any) -> InProcessGateway:
        port = free_port()
        settings.setdefault("request_log_path", tmp_path / f"requests-{port}.jsonl")
        settings.setdefault("health_interval_s", 0.2)
        settings.setdefault("health_timeout_s", 3.0)
        cfg = GatewayConfig.model_validate({"workers": workers, "port": port, **settings})
        return InProcessGateway(cfg, length_predictor).start()

    yield from _cleaned_up(start, InProcessGateway.stop)


@pytest.fixture(scope="module")
def shared_gateway(length_predictor, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One stand-in and one in-process gateway for tests that only send requests
    (no fault injection): ``(StandinWorker, InProcessGateway)``."""
    from harness import InProcessGateway, StandinWorker, free_port

    from server.config import GatewayConfig

    worker = StandinWorker().start()
    cfg = GatewayConfig.model_validate({
        "workers": [worker.url], "port": free_port(),
        "request_log_path": tmp_path_factory.mktemp("gw") / "requests.jsonl",
    })
    server = InProcessGateway(cfg, length_predictor).start()
    yield worker, server
    server.stop()
    worker.kill()
