"""One gateway instance: its parts, built from the configuration, started and stopped.

``create_app`` (``server.app``) builds a :class:`Gateway` in the FastAPI lifespan; nothing
lives in module globals, so tests run many gateways in one process.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import httpx
from prometheus_client import CollectorRegistry

from predictor.types import LengthPredictor
from server.auth import ApiKeyAuth
from server.backends import (
    CombinedDiscovery,
    Discovery,
    DnsDiscovery,
    StaticDiscovery,
    WorkerMonitor,
    WorkerPool,
)
from server.completions import CompletionService
from server.config import GatewayConfig
from server.dispatcher import Dispatcher
from server.engine_stats import EngineStats, EngineStatsPoller, learn_engine_view
from server.generation_probe import PROBE_PRIORITY
from server.metrics import GatewayMetrics
from server.online_learning import wrap_for_online_learning
from server.policy import EngineView, make_policy
from server.proxy import upstream_session
from server.rate_limit import RateLimiter, make_rate_limiter
from server.refinement import QueueRefiner
from server.request_log import RequestLog

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """The objects one gateway instance is made of (``app.state.gateway``)."""

    cfg: GatewayConfig
    pool: WorkerPool
    dispatcher: Dispatcher
    service: CompletionService
    metrics: GatewayMetrics
    auth: ApiKeyAuth
    monitor: WorkerMonitor
    stats_poller: EngineStatsPoller
    client: httpx.AsyncClient
    session: aiohttp.ClientSession
    request_log: RequestLog
    rate_limiter: RateLimiter
    refiner: QueueRefiner | None = None

    async def start(self) -> None:
        """Reach the rate-limit store, discover and probe the workers, start the pollers."""
        await self.rate_limiter.start()  # a configured store that does not answer stops us
        self.request_log.open()
        await self.monitor.start()
        self.stats_poller.start()
        if self.refiner is not None:
            self.refiner.start()
        if self.cfg.gc_freeze_after_start:
            # Everything built so far lives as long as the gateway: a full collection
            # should not re-scan it on every pass (see the setting's documentation).
            gc.collect()
            gc.freeze()
        log.info("gateway ready: %d/%d workers healthy, policy %s",
                 len(self.pool.healthy_ids()), len(self.pool.workers), self.cfg.policy.value)

    async def stop(self) -> None:
        """Drain (in-flight requests finish within the grace period), then close."""
        if not await self.dispatcher.drain(self.cfg.shutdown_grace_s):
            log.warning("shutdown grace period over with %d requests in flight",
                        self.dispatcher.in_flight)
        if self.refiner is not None:
            await self.refiner.stop()
        await self.stats_poller.stop()
        await self.monitor.stop()
        await self.client.aclose()
        await self.session.close()
        await self.rate_limiter.aclose()
        self.request_log.close()


def make_discovery(cfg: GatewayConfig) -> Discovery:
    sources: list[Discovery] = [StaticDiscovery(tuple(cfg.workers))]
    if cfg.worker_dns_name:
        sources.append(DnsDiscovery(cfg.worker_dns_name))
    return CombinedDiscovery(tuple(sources))


def build_gateway(cfg: GatewayConfig, predictor: LengthPredictor,
                  registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic,
                  ) -> Gateway:
    """Every part of one gateway, wired together (nothing started yet)."""
    metrics = GatewayMetrics(registry)
    limiter = make_rate_limiter(
        cfg.rate_limit_requests_per_min, cfg.rate_limit_tokens_per_min,
        cfg.rate_limit_redis_url.get_secret_value() if cfg.rate_limit_redis_url else None,
        clock, on_store_error=metrics.rate_limit_store_errors.inc)
    predictor, learner = wrap_for_online_learning(
        predictor, cfg.online_learning, cfg.online_learning_settings, metrics.registry)
    pool = WorkerPool(unhealthy_after_failures=cfg.unhealthy_after_failures,
                      outliers=cfg.outlier_detection,
                      engine_default=EngineView(max_running=cfg.worker_max_num_seqs),
                      on_taken_out=lambda url, reason: metrics.taken_out.labels(
                          url, reason).inc(),
                      clock=clock)
    dispatcher = Dispatcher(
        make_policy(cfg.policy_config), pool, cfg.admission_limits,
        queue_capacity=cfg.queue_capacity, queue_timeout_s=cfg.queue_timeout_s, clock=clock,
    )
    # One pooled client for all workers; limits sized so the pool never queues requests
    # the dispatcher has already admitted.
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        timeout=httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s),
        trust_env=False, headers=cfg.worker_headers,
    )
    session = upstream_session(cfg.worker_headers)
    request_log = RequestLog(cfg.request_log_path, cfg.request_log_max_bytes,
                             cfg.request_log_backups)
    monitor = WorkerMonitor(
        pool, make_discovery(cfg), client, health_interval_s=cfg.health_interval_s,
        health_timeout_s=cfg.health_timeout_s, dns_refresh_s=cfg.dns_refresh_s,
        stall_after_s=cfg.first_byte_timeout_s,
        probe_priority=PROBE_PRIORITY if cfg.engine_priority else None,
    )

    def on_stats(url: str, stats: EngineStats) -> None:
        if stats.kv_cache_usage is not None:
            metrics.kv_cache_usage.labels(url).set(stats.kv_cache_usage)
        worker = pool.workers.get(url)
        if worker is not None:
            pool.observe_engine(url, learn_engine_view(worker.engine, stats,
                                                       cfg.worker_max_num_seqs))

    stats_poller = EngineStatsPoller(
        client, lambda: list(pool.workers), on_stats, cfg.engine_stats_interval_s,
        cfg.health_timeout_s,
    )
    service = CompletionService(cfg, dispatcher, pool, client, session, predictor, metrics,
                                request_log, learner, clock)
    refiner = None
    if cfg.second_stage:
        refiner = QueueRefiner(load_required_second_stage(cfg), dispatcher, service.sizer,
                               cfg.second_stage_batch,
                               on_refined=lambda _t: metrics.second_stage_refined.inc())
        service.refiner = refiner
    return Gateway(cfg, pool, dispatcher, service, metrics, ApiKeyAuth(cfg.api_keys),
                   monitor, stats_poller, client, session, request_log, limiter, refiner)


def load_required_second_stage(cfg: GatewayConfig):
    from predictor.api import PredictorNotAvailable
    from predictor.refine import SecondStage, SecondStageUnavailable

    try:
        return SecondStage.load(cfg.predictor_dir)
    except SecondStageUnavailable as exc:
        raise PredictorNotAvailable(f"second_stage is on, but {exc}") from None
