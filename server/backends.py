"""vLLM workers: their state, discovery, and the health checks that move them in and out.

A worker is known by its base URL. ``WorkerPool`` keeps what the dispatcher
needs (health, in-flight sequences and predicted tokens, served models) and
calls ``on_change`` whenever capacity may have appeared, so queued requests
are dispatched at once. ``WorkerMonitor`` is the only place that does I/O:
it probes ``/health`` (and ``/v1/models`` to learn the served models) and
re-resolves DNS discovery.

A worker is *in rotation* when it is listed, passes its active health checks and is
not ejected. Three things take it out:

* active health checks: ``unhealthy_after_failures`` failed probes in a row, or a
  connection refused or cut on a real request (the worker is most likely down);
* the stall probe: a worker on which an answer has been awaited for
  ``first_byte_timeout_s`` with no answer from it meanwhile (a non-streaming request
  still open, or a stream's first event timed out) is asked for one token; if it
  cannot give it in that time, its engine is hung: it is taken out, even if it is the
  last worker, and its open non-streaming attempts are failed so they can be retried
  elsewhere (no byte of them has reached a client);
* outlier detection (``server.outlier_detection``): a run of failed requests.

A worker taken out by a failure returns only once a probe has made it generate a token.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from server.engine_stats import scrape_engine_stats
from server.generation_probe import probe_generation
from server.outlier_detection import UNHEALTHY_AFTER_FAILED_PROBES, OutlierDetection
from server.policy import EngineView, QueuedRequest, WorkerLoad, predicted_size

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class OpenAttempt:
    """A non-streaming attempt awaiting its answer; ``abort`` fails it (a stalled worker)."""

    worker_url: str
    started_at: float
    abort: Callable[[], None]
    aborted: bool = False


@dataclass(slots=True)
class Worker:
    url: str
    #: passes its active health checks (probes, connections)
    healthy: bool = False
    in_flight_sequences: int = 0
    in_flight_predicted_tokens: float = 0.0
    in_flight_kv_tokens: float = 0.0
    models: frozenset[str] = frozenset()
    #: what the engine reports of its capacity (``server.engine_stats.learn_engine_view``)
    engine: EngineView = field(default_factory=EngineView)
    #: the worker's own ``/v1/models`` entries, re-served by the gateway
    model_cards: tuple[dict, ...] = ()
    #: failed requests in a row (outlier detection)
    consecutive_failures: int = 0
    #: failed health probes in a row
    probe_failures: int = 0
    #: set while outlier detection keeps it out; it returns after this time (monotonic)
    #: once a probe has made it generate
    ejected_until: float | None = None
    #: ejections so far, less one per base ejection time spent in rotation since
    times_ejected: int = 0
    #: when it last returned from an ejection
    returned_at: float = 0.0
    #: taken out by a failure: it must generate a token before it returns
    must_generate: bool = False
    #: still known to discovery; a removed worker finishes its in-flight work
    listed: bool = True
    last_error: str | None = None
    #: non-streaming attempts awaiting their answer
    open_attempts: set[OpenAttempt] = field(default_factory=set)
    #: when it last answered (a complete answer, a stream's first event, a probe's token)
    last_answer_at: float = 0.0
    #: when an attempt on it last timed out with no answer from it since
    timed_out_at: float | None = None

    @property
    def worker_id(self) -> str:
        return self.url

    @property
    def in_rotation(self) -> bool:
        return self.healthy and self.listed and self.ejected_until is None

    def load(self) -> WorkerLoad:
        return WorkerLoad(
            self.url,
            self.in_rotation,
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
    #: failed health probes in a row that take a worker out
    unhealthy_after_failures: int = UNHEALTHY_AFTER_FAILED_PROBES
    outliers: OutlierDetection = field(default_factory=OutlierDetection)
    workers: dict[str, Worker] = field(default_factory=dict)
    #: what is known of a newly discovered worker's engine before it reports anything
    engine_default: EngineView = field(default_factory=EngineView)
    #: ``on_taken_out(url, reason)``: ``unreachable``, ``health_check``, ``stalled`` or
    #: ``ejected`` (counted in the gateway's metrics)
    on_taken_out: Callable[[str, str], None] = lambda _url, _reason: None
    clock: Callable[[], float] = time.monotonic

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

    def healthy_ids(self, model: str | None = None) -> set[str]:
        """Workers in rotation (serving ``model``, when given)."""
        return {w.url for w in self.workers.values()
                if w.in_rotation and (model is None or model in w.models)}

    def served_models(self) -> frozenset[str]:
        """Every model a listed worker serves, in rotation or not (a model whose workers
        are all out is unavailable for now, not unknown)."""
        models: set[str] = set()
        for w in self.workers.values():
            if w.listed:
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

    # --- what requests show ------------------------------------------------------------

    def report_answer(self, url: str) -> None:
        """The worker answered a request (200): it works, whatever failed before."""
        w = self.workers.get(url)
        if w is None:
            return
        w.consecutive_failures = 0
        w.last_answer_at = self.clock()
        w.timed_out_at = None

    def report_failure(self, url: str, reason: str, *, unreachable: bool = False,
                       timed_out: bool = False) -> None:
        """A request failed on the worker before any byte reached its client (or a stream
        was cut off): ``unreachable`` when the connection was refused or cut."""
        w = self.workers.get(url)
        if w is None:
            return
        w.last_error = reason
        if unreachable:
            self._take_out(w, "unreachable", reason)
            return
        w.consecutive_failures += 1
        if timed_out and w.timed_out_at is None:
            w.timed_out_at = self.clock()
        if w.in_rotation and w.consecutive_failures >= self.outliers.consecutive_failures:
            self._eject(w, reason)

    def _eject(self, w: Worker, reason: str) -> None:
        listed = [x for x in self.workers.values() if x.listed]
        ejected = sum(1 for x in listed if x.ejected_until is not None)
        in_rotation = sum(1 for x in listed if x.in_rotation)
        if not self.outliers.may_eject(listed=len(listed), ejected=ejected,
                                       in_rotation=in_rotation):
            log.warning("worker %s failed %d requests in a row (%s); kept in rotation: "
                        "%d of %d workers in rotation, %d ejected", w.url,
                        w.consecutive_failures, reason, in_rotation, len(listed), ejected)
            return
        now = self.clock()
        w.times_ejected = self.outliers.times_after_rest(w.times_ejected,
                                                         now - w.returned_at) + 1
        duration = self.outliers.ejection_s(w.times_ejected)
        w.ejected_until = now + duration
        w.must_generate = True
        log.warning("worker %s ejected for %.0f s after %d failed requests in a row: %s",
                    w.url, duration, w.consecutive_failures, reason)
        self.on_taken_out(w.url, "ejected")
        self.on_change()

    def _take_out(self, w: Worker, why: str, reason: str) -> None:
        w.must_generate = True
        if w.healthy:
            log.warning("worker %s taken out (%s): %s", w.url, why, reason)
            w.healthy = False
            self.on_taken_out(w.url, why)
            self.on_change()

    # --- stall detection -------------------------------------------------------------

    def open_attempt(self, url: str, abort: Callable[[], None]) -> OpenAttempt:
        attempt = OpenAttempt(url, self.clock(), abort)
        w = self.workers.get(url)
        if w is not None:
            w.open_attempts.add(attempt)
        return attempt

    def close_attempt(self, attempt: OpenAttempt) -> None:
        w = self.workers.get(attempt.worker_url)
        if w is not None:
            w.open_attempts.discard(attempt)

    def stall_suspects(self, after_s: float) -> list[str]:
        """Workers in rotation on which an answer has been awaited for ``after_s`` with no
        answer from them meanwhile."""
        now = self.clock()
        suspects = []
        for w in self.workers.values():
            if not w.in_rotation:
                continue
            waiting = [a.started_at for a in w.open_attempts]
            if w.timed_out_at is not None:
                waiting.append(w.timed_out_at - after_s)  # it waited that long already
            if waiting and now - max(min(waiting), w.last_answer_at) >= after_s:
                suspects.append(w.url)
        return suspects

    def report_stall_probe_failed(self, url: str, reason: str, *,
                                  progressed: bool | None) -> None:
        """A stall probe got no token in time. ``progressed``: whether the engine's own
        counter shows it generated tokens meanwhile (``None``: it does not say).

        An engine that generated is busy, not hung: it stays, and its requests keep
        waiting. One that generated nothing is hung: it is taken out and its open
        non-streaming attempts fail (and are retried elsewhere). Without the counter a
        full engine and a hung one look alike, so the last worker in rotation stays
        (its requests are still bounded by the request time-out)."""
        w = self.workers.get(url)
        if w is None:
            return
        if progressed:
            log.info("worker %s is busy, not hung: %s, but it generated tokens meanwhile",
                     url, reason)
            w.last_answer_at = self.clock()
            w.timed_out_at = None
            return
        if progressed is None and not (self.healthy_ids() - {url}):
            log.warning("worker %s kept in rotation, the last one: %s (it does not export "
                        "its generated-token count, so a full engine cannot be told from "
                        "a hung one)", url, reason)
            w.last_answer_at = self.clock()
            return
        w.last_error = reason
        w.timed_out_at = None
        self._take_out(w, "stalled", reason)
        for attempt in list(w.open_attempts):
            attempt.aborted = True
            attempt.abort()
        w.open_attempts.clear()

    # --- what health probes show -------------------------------------------------------

    def report_probe_failure(self, url: str, reason: str) -> None:
        w = self.workers.get(url)
        if w is None:
            return
        w.probe_failures += 1
        w.last_error = reason
        if w.probe_failures >= self.unhealthy_after_failures:
            self._take_out(w, "health_check", reason)

    def ejection_over(self, url: str) -> bool:
        w = self.workers.get(url)
        return w is not None and (w.ejected_until is None or self.clock() >= w.ejected_until)

    def model_cards(self) -> list[dict]:
        cards: dict[str, dict] = {}
        for w in self.workers.values():
            if w.in_rotation:
                for card in w.model_cards:
                    cards.setdefault(str(card["id"]), card)
        return list(cards.values())

    def report_healthy(self, url: str, model_cards: list[dict] | None = None, *,
                       generated: bool = False) -> None:
        """A probe passed (``generated``: it made the worker generate a token)."""
        w = self.workers.get(url)
        if w is None:
            return
        w.probe_failures = 0
        if model_cards is not None:
            w.model_cards = tuple(model_cards)
            w.models = frozenset(str(card["id"]) for card in model_cards)
        if generated:
            w.last_answer_at = self.clock()
            w.timed_out_at = None
            w.must_generate = False
        if w.must_generate:
            return  # it was taken out by a failure: /health alone does not bring it back
        changed = False
        if w.ejected_until is not None and self.clock() >= w.ejected_until:
            log.info("worker %s back from ejection", url)
            w.ejected_until = None
            w.returned_at = self.clock()
            w.consecutive_failures = 0
            changed = True
        if not w.healthy:
            log.info("worker %s healthy", url)
            w.healthy = True
            # Back from a failure, it may be a restarted engine of another size.
            w.engine = self.engine_default
            w.consecutive_failures = 0
            w.last_error = None
            changed = True
        if changed:
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


_PROBE_ERRORS = (httpx.HTTPError, ValueError, KeyError, TypeError)


class WorkerMonitor:
    """Background tasks: health probes, stall probes and discovery refresh."""

    def __init__(
        self,
        pool: WorkerPool,
        discovery: Discovery,
        client: httpx.AsyncClient,
        *,
        health_interval_s: float,
        health_timeout_s: float,
        dns_refresh_s: float,
        stall_after_s: float = 120.0,
        probe_priority: int | None = None,
    ) -> None:
        self.pool = pool
        self.discovery = discovery
        self.client = client
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.dns_refresh_s = dns_refresh_s
        #: how long an awaited answer may take before the worker is asked for one token
        #: (and the time it has to give it): the first-byte timeout
        self.stall_after_s = stall_after_s
        #: vLLM ``priority`` of probe completions (ahead of every request), or ``None``
        self.probe_priority = probe_priority
        self._tasks: list[asyncio.Task[None]] = []
        self._stall_probes: dict[str, asyncio.Task[None]] = {}

    async def refresh_discovery(self) -> None:
        self.pool.set_urls(await self.discovery.resolve())

    async def check_all(self) -> None:
        self.start_stall_probes()
        urls = list(self.pool.workers)
        await asyncio.gather(*(self._check(url) for url in urls))

    async def _check(self, url: str) -> None:
        worker = self.pool.workers.get(url)
        if worker is None or not self.pool.ejection_over(url):
            return  # an ejected worker is not probed until its ejection time is over
        # A worker out of rotation after a failure must show it still generates.
        returning = worker.must_generate
        was_in_rotation = worker.in_rotation
        try:
            models = await probe(self.client, url, self.health_timeout_s)
            if returning:
                await probe_generation(self.client, url, models, self.health_timeout_s,
                                       self.probe_priority)
        except _PROBE_ERRORS as exc:
            where = getattr(getattr(exc, "_request", None), "url", url)
            self.pool.report_probe_failure(url, f"health check of {where} failed: {exc!r}")
            return
        if was_in_rotation and not worker.in_rotation:
            # Taken out by a failed request while this probe ran: a plain /health answer
            # does not clear that; the next round probes with a generation.
            return
        self.pool.report_healthy(url, models, generated=returning)

    def start_stall_probes(self) -> None:
        for url in self.pool.stall_suspects(self.stall_after_s):
            if url not in self._stall_probes:
                # Its own task: a probe may take ``stall_after_s``, and must not hold up
                # the other workers' health checks meanwhile.
                task = asyncio.create_task(self._stall_probe(url))
                self._stall_probes[url] = task
                task.add_done_callback(lambda _t, u=url: self._stall_probes.pop(u, None))

    async def _stall_probe(self, url: str) -> None:
        worker = self.pool.workers.get(url)
        if worker is None or not worker.model_cards:
            return
        # A full engine makes the probe wait for a running slot (vLLM does not start a
        # waiting request, whatever its priority, while every slot is taken), so a probe
        # without its token proves a hang only if the engine generated nothing meanwhile.
        before = await self._generated_so_far(url)
        try:
            await probe_generation(self.client, url, list(worker.model_cards),
                                   self.stall_after_s, self.probe_priority)
        except _PROBE_ERRORS as exc:
            after = await self._generated_so_far(url)
            self.pool.report_stall_probe_failed(
                url, f"no token from a one-token probe within {self.stall_after_s:g} s "
                f"while requests waited on it ({exc!r})",
                progressed=None if before is None or after is None else after > before)
            return
        self.pool.report_healthy(url, generated=True)

    async def _generated_so_far(self, url: str) -> float | None:
        stats = await scrape_engine_stats(self.client, url, self.health_timeout_s)
        return None if stats is None else stats.generation_tokens

    async def start(self) -> None:
        """Discover and probe once (so the first request finds workers), then keep going."""
        await self.refresh_discovery()
        await self.check_all()
        self._tasks = [
            asyncio.create_task(self._loop(self.check_all, self.health_interval_s)),
            asyncio.create_task(self._loop(self.refresh_discovery, self.dns_refresh_s)),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._stall_probes.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    @staticmethod
    async def _loop(step: Callable[[], object], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await step()  # type: ignore[misc]
            except Exception:  # a monitor must outlive any one bad round
                log.exception("worker monitor round failed")
