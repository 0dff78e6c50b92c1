"""Fixtures for the reliability suite: real gateway and stand-in processes, cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from reliability_harness import Gateway, Standin


@pytest.fixture
def standins() -> Iterator:
    started: list[Standin] = []

    def make(**kwargs: Any) -> Standin:
        worker = Standin(**kwargs).start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.kill()


@pytest.fixture
def gateways(tmp_path) -> Iterator:
    started: list[Gateway] = []

    def make(workers: list[str], wait_healthy: bool = True, **settings: Any) -> Gateway:
        gw = Gateway(tmp_path, workers, **settings).start(wait_healthy=wait_healthy)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
