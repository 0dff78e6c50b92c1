"""Fixtures for gateway tests (helpers in gateway_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gateway_harness import GatewayServer, StandinWorker, free_port

from server.config import GatewayConfig


@pytest.fixture(scope="session")
def length_predictor():
    """The real trained predictor (trained once from CASTILLO if the cache has none)."""
    from server.predictor_loader import load_length_predictor

    return load_length_predictor()


@pytest.fixture
def standin_factory() -> Iterator:
    started: list[StandinWorker] = []

    def make(**kwargs: Any) -> StandinWorker:
        worker = StandinWorker(**kwargs).start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.kill()


@pytest.fixture
def gateway_factory(length_predictor, tmp_path) -> Iterator:
    started: list[GatewayServer] = []

    def make(workers: list[str], **settings: Any) -> GatewayServer:
        settings.setdefault("request_log_path", tmp_path / f"requests-{len(started)}.jsonl")
        settings.setdefault("health_interval_s", 0.2)
        settings.setdefault("health_timeout_s", 3.0)
        cfg = GatewayConfig.model_validate(
            {"workers": workers, "port": free_port(), **settings}
        )
        server = GatewayServer(cfg, length_predictor).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_gateway(length_predictor, tmp_path_factory) -> Iterator[tuple[StandinWorker, GatewayServer]]:
    """One stand-in and one gateway for tests that only send requests (no fault injection)."""
    worker = StandinWorker().start()
    cfg = GatewayConfig.model_validate({
        "workers": [worker.url], "port": free_port(),
        "request_log_path": tmp_path_factory.mktemp("gw") / "requests.jsonl",
    })
    server = GatewayServer(cfg, length_predictor).start()
    yield worker, server
    server.stop()
    worker.kill()
