"""vLLM's own Prometheus ``/metrics`` text -> ``EngineStats`` (pure), plus an async poller."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from server.policy import EngineView

log = logging.getLogger(__name__)

KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
# Older vLLM releases exported the same fraction under this name.
KV_CACHE_USAGE_LEGACY = "vllm:gpu_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
CACHE_CONFIG = "vllm:cache_config_info"
#: A counter of every token the engine has generated: it grows while the engine works.
GENERATION_TOKENS = "vllm:generation_tokens_total"

#: Above this KV usage a waiting queue may be memory-bound, so the running count then
#: says nothing about the engine's sequence limit.
KV_BOUND_USAGE = 0.9


@dataclass(frozen=True, slots=True)
class EngineStats:
    """One scrape of a worker. Values summed over label sets (one per served model)."""

    kv_cache_usage: float | None = None  # fraction 0..1
    num_running: float | None = None
    num_waiting: float | None = None
    #: KV cache capacity in tokens (``vllm:cache_config_info``: num_gpu_blocks x block_size)
    kv_capacity_tokens: float | None = None
    #: tokens generated since start (a counter): it grows while the engine works
    generation_tokens: float | None = None

    @classmethod
    def from_vllm_scrape(cls, text: str) -> EngineStats:
        values = parse_samples(text, {KV_CACHE_USAGE, KV_CACHE_USAGE_LEGACY, RUNNING, WAITING,
                                      GENERATION_TOKENS})
        kv = values.get(KV_CACHE_USAGE, values.get(KV_CACHE_USAGE_LEGACY))
        return cls(kv, values.get(RUNNING), values.get(WAITING), kv_capacity_tokens(text),
                   values.get(GENERATION_TOKENS))


async def scrape_engine_stats(client: httpx.AsyncClient, url: str,
                              timeout_s: float) -> EngineStats | None:
    """One scrape of a worker's ``/metrics``; ``None`` when it cannot be read."""
    try:
        resp = await client.get(f"{url}/metrics", timeout=timeout_s)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    return EngineStats.from_vllm_scrape(resp.text)


def kv_capacity_tokens(text: str) -> float | None:
    """The engine's KV capacity from its ``vllm:cache_config_info`` labels (summed over
    engines); ``None`` when the scrape does not say."""
    total = 0.0
    found = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith(CACHE_CONFIG + "{"):
            continue
        labels = parse_labels(line[len(CACHE_CONFIG):])
        try:
            blocks = float(labels["num_gpu_blocks"])
            block_size = float(labels["block_size"])
        except (KeyError, ValueError):
            continue
        if math.isfinite(blocks * block_size) and blocks > 0 and block_size > 0:
            total += blocks * block_size
            found = True
    return total if found else None


def parse_labels(text: str) -> dict[str, str]:
    """``{a="1",b="x y"}`` -> ``{"a": "1", "b": "x y"}`` (Prometheus text-format escapes)."""
    out: dict[str, str] = {}
    i = text.find("{") + 1
    while 0 < i < len(text):
        eq = text.find("=", i)
        if eq == -1 or eq + 1 >= len(text) or text[eq + 1] != '"':
            break
        name = text[i:eq].strip().lstrip(",").strip()
        j, value = eq + 2, []
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
                value.append({"n": "\n"}.get(text[j], text[j]))
            else:
                value.append(text[j])
            j += 1
        out[name] = "".join(value)
        i = j + 1
        if i < len(text) and text[i] == "}":
            break
    return out


def learn_engine_view(previous: EngineView, stats: EngineStats,
                      configured_max_running: int | None = None) -> EngineView:
    """What the gateway now knows of an engine's capacity after one scrape.

    vLLM does not export ``max_num_seqs``. Whenever requests wait while the KV cache has
    room, the running count is the limit: the first such report sets the estimate, and a
    smaller count is believed once it shows in two reports in a row (a single step where
    the token budget held a prompt back shows fewer running too). The running count never
    exceeds the limit, so a larger count raises the estimate at once. A configured value
    wins."""
    capacity = stats.kv_capacity_tokens or previous.kv_capacity_tokens
    if configured_max_running is not None:
        return EngineView(configured_max_running, capacity)
    max_running, fewer = previous.max_running, None
    running = int(stats.num_running or 0)
    seq_bound = (stats.num_waiting is not None and stats.num_waiting >= 1 and running >= 1
                 and (stats.kv_cache_usage is None or stats.kv_cache_usage < KV_BOUND_USAGE))
    if seq_bound and max_running is None:
        max_running = running
    elif max_running is not None and running > max_running:
        # The engine never runs more than its limit, so a larger count raises the estimate
        # (the requests admitted beyond it let a grown engine show it). Before anything
        # is known, a count at low load says nothing, and the engine stays unlimited.
        max_running = running
    elif seq_bound and max_running is not None and running < max_running:
        if previous.fewer_running_seen == running:
            max_running = running
        else:
            fewer = running
    return EngineView(max_running, capacity, fewer)


def parse_samples(text: str, names: set[str]) -> dict[str, float]:
    """Sum of each wanted sample name over its label sets; other lines are skipped.

    Prometheus text format: ``name{labels} value [timestamp]``; label values may
    hold spaces or braces inside quotes, so the value is found after the
    closing brace rather than by splitting the whole line.
    """
    out: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            close = _closing_brace(line, brace)
            if close == -1:
                continue
            rest = line[close + 1 :].split()
        else:
            parts = line.split()
            name, rest = parts[0], parts[1:]
        if name not in names or not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def _closing_brace(line: str, start: int) -> int:
    in_quotes = False
    escaped = False
    for i in range(start + 1, len(line)):
        ch = line[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == "}" and not in_quotes:
            return i
    return -1


class EngineStatsPoller:
    """Scrapes every worker's ``/metrics`` and hands each result to ``on_stats``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        worker_urls: Callable[[], list[str]],
        on_stats: Callable[[str, EngineStats], None],
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.worker_urls = worker_urls
        self.on_stats = on_stats
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    async def scrape(self, url: str) -> EngineStats | None:
        return await scrape_engine_stats(self.client, url, self.timeout_s)

    async def poll_once(self) -> None:
        urls = self.worker_urls()
        results = await asyncio.gather(*(self.scrape(u) for u in urls))
        for url, stats in zip(urls, results):
            if stats is not None:
                self.on_stats(url, stats)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("engine stats poll failed")
            await asyncio.sleep(self.interval_s)
