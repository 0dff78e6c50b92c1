"""The gateway's Prometheus metrics, on an injected ``CollectorRegistry``.

Names start with ``lengthwise_``, use base units (seconds, tokens), and carry
only low-cardinality labels: worker URL (a handful), policy, endpoint, status
class, served model (only names the workers serve reach the counters). Per-worker
gauges and the queue depth are set from live state at scrape time. The registry
also carries prometheus_client's process and platform collectors, so the gateway's
own memory and CPU (``process_*``) sit next to the vLLM workers' on the dashboards.

Time to first token is only observable for streaming requests: a non-streaming
reply arrives in one piece, so ``lengthwise_request_ttft_seconds`` (and TPOT)
only count streaming requests; vLLM's ``vllm:time_to_first_token_seconds``
covers every request inside the worker.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from server.backends import WorkerPool

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4, 10)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # process_resident_memory_bytes, process_cpu_seconds_total, ... of this process.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.e2e = Histogram(
            "lengthwise_request_e2e_seconds", "Arrival to last byte, per request.",
            ["endpoint", "policy"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "lengthwise_request_ttft_seconds",
            "Arrival to the first streamed token; streaming requests only (a non-streaming "
            "reply has no observable first token).",
            ["endpoint", "policy"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.tpot = Histogram(
            "lengthwise_request_tpot_seconds", "Time per output token after the first.",
            ["endpoint", "policy"], buckets=TPOT_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "lengthwise_queue_wait_seconds", "Time a request waited in the gateway's queue.",
            ["policy"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_depth = Gauge(
            "lengthwise_queue_depth", "Requests waiting in the gateway's queue, by policy.",
            ["policy"], registry=registry,
        )
        self.in_flight = Gauge(
            "lengthwise_worker_in_flight", "Requests the gateway has in flight per worker.",
            ["worker"], registry=registry,
        )
        self.in_flight_predicted = Gauge(
            "lengthwise_worker_in_flight_predicted_tokens",
            "Predicted completion tokens in flight per worker.", ["worker"], registry=registry,
        )
        self.engine_slots = Gauge(
            "lengthwise_worker_engine_slots",
            "Sequences the worker's engine runs at once, as admission knows it (configured, "
            "or learned from vLLM's running count); absent while unknown.",
            ["worker"], registry=registry,
        )
        self.engine_kv_capacity = Gauge(
            "lengthwise_worker_engine_kv_capacity_tokens",
            "The worker's KV cache in tokens, from vLLM's vllm:cache_config_info; absent "
            "while unknown.", ["worker"], registry=registry,
        )
        self.worker_healthy = Gauge(
            "lengthwise_worker_healthy", "1 when the worker is in rotation.", ["worker"],
            registry=registry,
        )
        self.taken_out = Counter(
            "lengthwise_worker_taken_out",
            "Times a worker was taken out of rotation, by reason: unreachable (connection "
            "refused), health_check (failed probes), stalled (no token from the stall "
            "probe) or ejected (outlier detection: failed requests in a row).",
            ["worker", "reason"], registry=registry,
        )
        self.second_stage_refined = Counter(
            "lengthwise_second_stage_refined",
            "Waiting requests re-ranked by the predictor's second stage.", registry=registry,
        )
        self.rate_limit_store_errors = Counter(
            "lengthwise_rate_limit_store_errors",
            "Rate-limit checks or charges that failed because the shared store (Redis) "
            "did not answer; the request was admitted.", registry=registry,
        )
        self.kv_cache_usage = Gauge(
            "lengthwise_worker_kv_cache_usage_ratio",
            "The worker's KV-cache usage (0..1), from vLLM's vllm:kv_cache_usage_perc.",
            ["worker"], registry=registry,
        )
        self.requests = Counter(
            "lengthwise_requests", "Finished requests by outcome.",
            ["endpoint", "policy", "status"], registry=registry,
        )
        self.prompt_tokens = Counter(
            "lengthwise_prompt_tokens", "Prompt tokens of finished requests (vLLM's usage).",
            registry=registry,
        )
        self.completion_tokens = Counter(
            "lengthwise_completion_tokens", "Completion tokens of finished requests.",
            registry=registry,
        )
        self.retries = Counter(
            "lengthwise_retries", "Attempts retried on another worker.", ["reason"],
            registry=registry,
        )
        self.predicted_tokens = Histogram(
            "lengthwise_predicted_tokens", "Predicted completion tokens per request.",
            buckets=TOKEN_BUCKETS, registry=registry,
        )
        self.prediction_ratio = Histogram(
            "lengthwise_prediction_error_ratio",
            "Predicted over actual completion tokens (1 = exact; >1 over-predicted).",
            buckets=RATIO_BUCKETS, registry=registry,
        )
        self.p90_coverage = Counter(
            "lengthwise_prediction_p90_coverage",
            "Single-sequence requests whose actual completion length was at most the "
            "predicted p90 (covered=\"true\") or above it (covered=\"false\"); a calibrated "
            "predictor covers 90%.",
            ["model", "covered"], registry=registry,
        )
        self._known_workers: set[str] = set()

    def sync_workers(self, pool: WorkerPool, queue_depth: int, policy: str) -> None:
        """Refresh gauges from live state; called right before each scrape."""
        self.queue_depth.labels(policy).set(queue_depth)
        current = set(pool.workers)
        for gone in self._known_workers - current:
            for gauge in (self.in_flight, self.in_flight_predicted, self.worker_healthy,
                          self.kv_cache_usage, self.engine_slots, self.engine_kv_capacity):
                _remove(gauge, gone)
        for url, w in pool.workers.items():
            self.in_flight.labels(url).set(w.in_flight_sequences)
            self.in_flight_predicted.labels(url).set(w.in_flight_predicted_tokens)
            self.worker_healthy.labels(url).set(1 if w.in_rotation else 0)
            for gauge, value in ((self.engine_slots, w.engine.max_running),
                                 (self.engine_kv_capacity, w.engine.kv_capacity_tokens)):
                if value is None:
                    _remove(gauge, url)
                else:
                    gauge.labels(url).set(value)
        self._known_workers = current

    def observe_p90_coverage(self, model: str, actual_tokens: int, predicted_p90: float) -> None:
        self.p90_coverage.labels(model, "true" if actual_tokens <= predicted_p90 else "false").inc()

    def render(self, before: Callable[[], None] | None = None) -> bytes:
        if before:
            before()
        return generate_latest(self.registry)


def _remove(gauge: Gauge, worker: str) -> None:
    try:
        gauge.remove(worker)
    except KeyError:
        pass
