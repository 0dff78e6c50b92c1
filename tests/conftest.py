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
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

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
    from server.worker_process import (
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

    from server.local_model import LocalModelError, prepare_local_model

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
