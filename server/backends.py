"""vLLM workers: their state, discovery, and the health checks that move them in and out.

A worker is known by its base URL. ``WorkerPool`` keeps what the dispatcher
needs (health, in-flight sequences and predicted tokens, served models) and
calls ``on_change`` whenever capacity may have appeared, so queued requests
are dispatched at once. ``WorkerMonitor`` is the only place that does I/O:
it probes ``/health`` (and ``/v1/models`` to learn the served models) and
re-resolves DNS discovery.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from server.generation_probe import probe_generation
from server.policy import EngineView, QueuedRequest, WorkerLoad, predicted_size

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Worker:
    url: str
    healthy: bool = False
    in_flight_sequences: int = 0
    in_flight_predicted_tokens: float = 0.0
    in_flight_kv_tokens: float = 0.0
    models: frozenset[str] = frozenset()
    #: what the engine reports of its capacity (``server.engine_stats.learn_engine_view``)
    engine: EngineView = field(default_factory=EngineView)
    #: the worker's own ``/v1/models`` entries, re-served by the gateway
    model_cards: tuple[dict, ...] = ()
    consecutive_failures: int = 0
    #: still known to discovery; a removed worker finishes its in-flight work
    listed: bool = True
    last_error: str | None = None

    @property
    def worker_id(self) -> str:
        return self.url

    def load(self) -> WorkerLoad:
        return WorkerLoad(
            self.url,
            self.healthy and self.listed,
            self.in_flight_sequences,
            self.in_flight_predicted_tokens,
            self.in_flight_kv_tokens,
            # before the first probe the served models are unknown, not "none"
            self.models if self.model_cards else None,
            self.engine,
        )

    def _set(self, load: WorkerLoad) -> None:
        self.in_flight_sequences = load.in_flight_sequences
        self.in_flight_predicted_tokens = load.in_flight_predicted_tokens
        self.in_flight_kv_tokens = load.in_flight_kv_tokens


@dataclass
class WorkerPool:
    on_change: Callable[[], None] = lambda: None
    unhealthy_after_failures: int = 1
    workers: dict[str, Worker] = field(default_factory=dict)
    #: what is known of a newly discovered worker's engine before it reports anything
    engine_default: EngineView = field(default_factory=EngineView)

    def set_urls(self, urls: Iterable[str]) -> None:
        wanted = {u.rstrip("/") for u in urls}
        for url in wanted:
            worker = self.workers.get(url)
            if worker is None:
                self.workers[url] = Worker(url, engine=self.engine_default)
            else:
                worker.listed = True
        for url, worker in list(self.workers.items()):
            if url not in wanted:
                worker.listed = False
                if worker.in_flight_sequences == 0:
                    del self.workers[url]
        self.on_change()

    def loads(self) -> list[WorkerLoad]:
        return [w.load() for w in self.workers.values()]

    def load_map(self) -> dict[str, WorkerLoad]:
        return {url: w.load() for url, w in self.workers.items()}

    def healthy_ids(self) -> set[str]:
        return {w.url for w in self.workers.values() if w.healthy and w.listed}

    def served_models(self) -> frozenset[str]:
        models: set[str] = set()
        for w in self.workers.values():
            if w.healthy and w.listed:
                models |= w.models
        return frozenset(models)

    def reserve(self, url: str, request: QueuedRequest) -> None:
        w = self.workers[url]
        w._set(w.load().plus(request))

    def swap(self, url: str, old: QueuedRequest, new: QueuedRequest) -> None:
        """Replace a request's provisional sizes by its real prediction (in flight)."""
        w = self.workers.get(url)
        if w is None or w.in_flight_sequences == 0:
            return
        w.in_flight_predicted_tokens = max(0.0, w.in_flight_predicted_tokens
                                           - predicted_size(old.predicted_tokens)
                                           + predicted_size(new.predicted_tokens))
        w.in_flight_kv_tokens = max(0.0, w.in_flight_kv_tokens - old.kv_tokens + new.kv_tokens)

    def release(self, url: str, request: QueuedRequest) -> None:
        w = self.workers.get(url)
        if w is None:
            return
        w._set(w.load().minus(request))
        if w.in_flight_sequences == 0 and not w.listed:
            del self.workers[url]
        self.on_change()

    def observe_engine(self, url: str, engine: EngineView) -> None:
        """What the worker's engine reported; more room may let queued requests go."""
        w = self.workers.get(url)
        if w is not None and w.engine != engine:
            w.engine = engine
            self.on_change()

    def report_failure(self, url: str, reason: str, *, immediate: bool = False) -> None:
        w = self.workers.get(url)
        if w is None:
            return
        w.consecutive_failures += 1
        w.last_error = reason
        if w.healthy and (immediate or w.consecutive_failures >= self.unhealthy_after_failures):
            log.warning("worker %s taken out: %s", url, reason)
            w.healthy = False
            self.on_change()

    def model_cards(self) -> list[dict]:
        cards: dict[str, dict] = {}
        for w in self.workers.values():
            if w.healthy and w.listed:
                for card in w.model_cards:
                    cards.setdefault(str(card["id"]), card)
        return list(cards.values())

    def report_healthy(self, url: str, model_cards: list[dict] | None = None) -> None:
        w = self.workers.get(url)
        if w is None:
            return
        w.consecutive_failures = 0
        w.last_error = None
        if model_cards is not None:
            w.model_cards = tuple(model_cards)
            w.models = frozenset(str(card["id"]) for card in model_cards)
        if not w.healthy:
            log.info("worker %s healthy", url)
            w.healthy = True
            # Back from a failure, it may be a restarted engine of another size.
            w.engine = self.engine_default
            self.on_change()


class Discovery(Protocol):
    async def resolve(self) -> list[str]: ...


@dataclass(frozen=True)
class StaticDiscovery:
    urls: tuple[str, ...]

    async def resolve(self) -> list[str]:
        return list(self.urls)


@dataclass(frozen=True)
class DnsDiscovery:
    """Every address ``url``'s host name resolves to is a worker on the same port and path."""

    url: str

    async def resolve(self) -> list[str]:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
        urls = set()
        for family, *_rest, sockaddr in infos:
            address = sockaddr[0]
            netloc = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
            urls.add(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")))
        return sorted(urls)


@dataclass(frozen=True)
class CombinedDiscovery:
    sources: tuple[Discovery, ...]

    async def resolve(self) -> list[str]:
        urls: list[str] = []
        for source in self.sources:
            try:
                urls.extend(await source.resolve())
            except OSError as exc:
                log.warning("worker discovery failed: %s", exc)
        return urls


async def probe(client: httpx.AsyncClient, url: str, timeout_s: float) -> list[dict]:
    """Check a worker's ``/health`` and return its ``/v1/models`` entries; raises on failure."""
    health = await client.get(f"{url}/health", timeout=timeout_s)
    health.raise_for_status()
    models = await client.get(f"{url}/v1/models", timeout=timeout_s)
    models.raise_for_status()
    data = models.json().get("data", [])
    return [m for m in data if isinstance(m, dict) and "id" in m]


class WorkerMonitor:
    """Background tasks: health probes and discovery refresh."""

    def __init__(
        self,
        pool: WorkerPool,
        discovery: Discovery,
        client: httpx.AsyncClient,
        *,
        health_interval_s: float,
        health_timeout_s: float,
        dns_refresh_s: float,
    ) -> None:
        self.pool = pool
        self.discovery = discovery
        self.client = client
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.dns_refresh_s = dns_refresh_s
        self._tasks: list[asyncio.Task[None]] = []

    async def refresh_discovery(self) -> None:
        self.pool.set_urls(await self.discovery.resolve())

    async def check_all(self) -> None:
        urls = list(self.pool.workers)
        await asyncio.gather(*(self._check(url) for url in urls))

    async def _check(self, url: str) -> None:
        worker = self.pool.workers.get(url)
        # A worker out of rotation after a failure must show it still generates.
        returning = worker is not None and not worker.healthy and worker.consecutive_failures > 0
        was_healthy = worker is not None and worker.healthy
        try:
            models = await probe(self.client, url, self.health_timeout_s)
            if returning:
                await probe_generation(self.client, url, models, self.health_timeout_s)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            where = getattr(getattr(exc, "_request", None), "url", url)
            self.pool.report_failure(url, f"health check of {where} failed: {exc!r}")
            return
        if was_healthy and not worker.healthy:
            # Taken out by a failed request while this probe ran: a plain /health answer
            # does not clear that; the next round probes with a generation.
            return
        self.pool.report_healthy(url, models)

    async def start(self) -> None:
        """Discover and probe once (so the first request finds workers), then keep going."""
        await self.refresh_discovery()
        await self.check_all()
        self._tasks = [
            asyncio.create_task(self._loop(self.check_all, self.health_interval_s)),
            asyncio.create_task(self._loop(self.refresh_discovery, self.dns_refresh_s)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    @staticmethod
    async def _loop(step: Callable[[], object], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await step()  # type: ignore[misc]
            except Exception:  # a monitor must outlive any one bad round
                log.exception("worker monitor round failed")
