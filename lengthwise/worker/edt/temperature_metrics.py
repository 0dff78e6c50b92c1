"""Prometheus histogram of the temperatures EDT applies, served from inside the vLLM worker.

The gateway never sees per-token temperatures: EDT runs as a logits processor in
the process that owns vLLM's model runner (on the CPU build a grandchild of the
API server: API server -> engine core -> executor worker). When the worker's
environment sets ``LENGTHWISE_EDT_METRICS_PORT``, the first EDT processor built in
a process starts a small prometheus_client HTTP server on that port and every
EDT processor of that process adds to one histogram:

    lengthwise_edt_applied_temperature_bucket{le=...}  sampled tokens per bucket
    lengthwise_edt_applied_temperature_sum / _count
    process_*  (memory and CPU of this model-runner process)

One observation per sampled token of a request that uses EDT (rows without EDT
are not counted); 0 means the formula's floor made that step greedy. Recording
is two tensor ops per step on the device the logits live on (bucketize, then
``index_add_`` into a fixed-size accumulator; ``index_add_`` rather than
``bincount`` because bincount's output size needs a host sync on GPU). The
accumulator is copied to the host only when Prometheus scrapes.

A port that cannot be bound (taken by another process, e.g. a second tensor-parallel
rank on the same host, which samples the same tokens anyway) is logged once and
recording stays off in that process; metrics never stop decoding.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # torch is imported where tensors are handled: the gateway reads PORT_ENV
    import torch

log = logging.getLogger(__name__)

PORT_ENV = "LENGTHWISE_EDT_METRICS_PORT"
HOST_ENV = "LENGTHWISE_EDT_METRICS_HOST"
METRIC_NAME = "lengthwise_edt_applied_temperature"
# Applied temperatures lie in [0, T0] (EDT only cools); 0 = floored to greedy.
TEMPERATURE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
                       1.2, 1.5, 2.0)


class AppliedTemperatureHistogram:
    """Fixed-bucket histogram accumulated with tensor ops; snapshots for scrapes."""

    def __init__(self, bounds: tuple[float, ...] = TEMPERATURE_BUCKETS) -> None:
        self.bounds = bounds
        self._lock = threading.Lock()
        self._boundaries: dict[torch.device, torch.Tensor] = {}
        # Per device: counts of len(bounds) + 1 buckets (the last is +Inf), then the sum.
        self._state: dict[torch.device, torch.Tensor] = {}
        self._failed = False

    def observe(self, temperatures: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add one observation per element; ``weights`` (0 or 1 per element) leaves rows out
        without a boolean index, so the GPU path never waits for the device.

        Never raises: a failure is logged once and recording stops, decoding goes on."""
        if self._failed:
            return
        try:
            self._accumulate(temperatures, weights)
        except Exception:
            self._failed = True
            log.exception("EDT metrics: recording failed; applied temperatures are no longer "
                          "counted in this process")

    def _accumulate(self, temperatures: torch.Tensor, weights: torch.Tensor | None) -> None:
        import torch

        device = temperatures.device
        with self._lock:
            state = self._state.get(device)
            if state is None:
                self._boundaries[device] = torch.tensor(self.bounds, dtype=torch.float32,
                                                        device=device)
                state = torch.zeros(len(self.bounds) + 2, dtype=torch.float64, device=device)
                self._state[device] = state
            values = temperatures.detach().to(torch.float32)
            # right=False: index i holds bounds[i-1] < t <= bounds[i], Prometheus' `le`.
            index = torch.bucketize(values, self._boundaries[device])
            w = (torch.ones_like(values) if weights is None else weights.to(torch.float32))
            state[: len(self.bounds) + 1].index_add_(0, index, w.to(torch.float64))
            state[-1] += (values * w).sum(dtype=torch.float64)

    def snapshot(self) -> tuple[list[float], float]:
        """Per-bucket (non-cumulative) counts including +Inf, and the sum."""
        with self._lock:
            states = [s.detach().to("cpu", copy=True) for s in self._state.values()]
        counts = [0.0] * (len(self.bounds) + 1)
        total = 0.0
        for state in states:
            values = state.tolist()
            counts = [a + b for a, b in zip(counts, values[:-1])]
            total += values[-1]
        return counts, total


class _HistogramCollector(Collector):
    def __init__(self, histogram: AppliedTemperatureHistogram) -> None:
        self._histogram = histogram

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = self._histogram.snapshot()
        cumulative, buckets = 0.0, []
        for bound, count in zip((*self._histogram.bounds, float("inf")), counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family = HistogramMetricFamily(
            METRIC_NAME,
            "Temperature EDT applied per sampled token of requests using EDT "
            "(0 = floored to greedy).",
        )
        family.add_metric([], buckets, total)
        yield family


class _ProcessExporter:
    """The one histogram and HTTP server of this process (see ``process_histogram``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided = False
        self._histogram: AppliedTemperatureHistogram | None = None

    def histogram(self) -> AppliedTemperatureHistogram | None:
        with self._lock:
            if not self._decided:
                self._decided = True
                self._histogram = _start_from_environment()
            return self._histogram


def _start_from_environment() -> AppliedTemperatureHistogram | None:
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        log.warning("EDT metrics off: %s=%r is not a TCP port", PORT_ENV, raw)
        return None
    host = os.environ.get(HOST_ENV, "0.0.0.0")
    histogram = AppliedTemperatureHistogram()
    registry = CollectorRegistry()
    registry.register(_HistogramCollector(histogram))
    # This is the model-runner process, which holds the weights (and on CPU the KV cache):
    # its memory is not in vLLM's own process_* metrics, which describe the API server.
    ProcessCollector(registry=registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("EDT metrics off in process %d: cannot listen on %s:%d (%s); another "
                    "process (e.g. another rank of this worker) may serve them",
                    os.getpid(), host, port, exc)
        return None
    log.info("EDT applied-temperature metrics on http://%s:%d/metrics (process %d)",
             host, port, os.getpid())
    return histogram


# One HTTP server per process, whichever processor instance asks first: the model
# runner may build its logits processors more than once, and a second server on the
# same port would fail. This is the only process-wide state, and it is write-once.
_EXPORTER = _ProcessExporter()


def process_histogram() -> AppliedTemperatureHistogram | None:
    """This process's histogram, starting its server on first use; None when metrics are off."""
    return _EXPORTER.histogram()
