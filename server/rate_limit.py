"""Per-API-key rate limits: requests per minute and tokens per minute, as token buckets.

Each key has two buckets that refill continuously (limit / 60 per second) up to
one minute's worth. A request takes one unit from the request bucket when it is
admitted. Its tokens (vLLM's ``usage.total_tokens``: prompt plus completion) are
only known when it finishes, so the token bucket is charged then and may go
negative; a key whose token bucket is not positive is refused until it refills.
Several requests started together can therefore overshoot the token limit by
their own size once, never by more.

Refusals raise a 429 ``GatewayError`` (OpenAI's ``rate_limit_exceeded``) with
``Retry-After`` set to when the bucket allows the next request. Without API keys
configured, all clients share one bucket (the limits then cap the gateway as a whole).

Where the buckets live: in this process (``RateLimiter``, the default: exact for one
gateway replica; N replicas let a key through N times over), or in Redis
(``rate_limit_redis_url``, ``server.rate_limit_redis``), shared by every replica.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response

from server.errors import GatewayError
from server.proxy import ProxyStreamResponse


@dataclass(slots=True)
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) * 60.0 / self.capacity)


class Limiter(Protocol):
    """Where the buckets are kept; ``RateLimiter`` (this process) or ``RedisRateLimiter``."""

    requests_per_min: int | None
    tokens_per_min: int | None

    async def start(self) -> None: ...

    async def admit(self, key: str) -> None:
        """Take one request from ``key``'s allowance, or raise a 429 ``GatewayError``."""

    def charge_tokens(self, key: str, tokens: int) -> None:
        """Charge a finished request's tokens to ``key`` (may complete in the background)."""

    async def aclose(self) -> None: ...


class RateLimiter:
    """The buckets in this process's memory: exact for one gateway replica."""

    def __init__(
        self,
        requests_per_min: int | None,
        tokens_per_min: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}
        # Settlement can run from response callbacks; keep bucket updates atomic.
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.requests_per_min is not None or self.tokens_per_min is not None

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def admit(self, key: str) -> None:
        self.admit_now(key)

    def admit_now(self, key: str) -> None:
        """Take one request from ``key``'s allowance, or raise a 429 ``GatewayError``."""
        if not self.enabled:
            return
        with self._lock:
            now = self.clock()
            tokens = self._bucket(self._tokens, key, self.tokens_per_min, now)
            if tokens is not None and tokens.level <= 0:
                raise limited("tokens per minute", self.tokens_per_min,
                               tokens.seconds_until(1.0))
            requests = self._bucket(self._requests, key, self.requests_per_min, now)
            if requests is not None:
                if requests.level < 1.0:
                    raise limited("requests per minute", self.requests_per_min,
                                   requests.seconds_until(1.0))
                requests.level -= 1.0

    def charge_tokens(self, key: str, tokens: int) -> None:
        """Charge a finished request's tokens to ``key``."""
        if self.tokens_per_min is None or tokens <= 0:
            return
        with self._lock:
            bucket = self._bucket(self._tokens, key, self.tokens_per_min, self.clock())
            assert bucket is not None
            bucket.level -= tokens

    def _bucket(
        self, buckets: dict[str, _Bucket], key: str, limit: int | None, now: float
    ) -> _Bucket | None:
        if limit is None:
            return None
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(float(limit), float(limit), now)
        else:
            bucket.refill(now)
        return bucket


def limited(what: str, limit: int | None, wait_s: float) -> GatewayError:
    return GatewayError(
        429, f"Rate limit reached for this API key: {limit} {what}. Retry later.",
        code="rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


def make_rate_limiter(requests_per_min: int | None, tokens_per_min: int | None,
                      redis_url: str | None,
                      clock: Callable[[], float] = time.monotonic,
                      on_store_error: Callable[[], None] = lambda: None) -> Limiter:
    """The configured limiter: in Redis when a URL is given (and a limit is set)."""
    if redis_url and (requests_per_min is not None or tokens_per_min is not None):
        from server.rate_limit_redis import RedisRateLimiter

        return RedisRateLimiter(redis_url, requests_per_min, tokens_per_min,
                                on_error=on_store_error)
    return RateLimiter(requests_per_min, tokens_per_min, clock)


def charge_when_finished(response: Response, charge: Callable[[int], None]) -> None:
    """Call ``charge(total_tokens)`` once ``response`` is complete (a stream: when it ends)."""
    if isinstance(response, ProxyStreamResponse):
        stats = response.stream.inspector.stats
        on_finish = response.on_finish

        def charged_on_finish(outcome: str) -> Awaitable[None] | None:
            charge(_total_tokens(stats.usage))
            return on_finish(outcome)

        response.on_finish = charged_on_finish
        return
    try:
        data = json.loads(response.body)
    except (ValueError, AttributeError):
        return
    if isinstance(data, dict) and isinstance(data.get("usage"), dict):
        charge(_total_tokens(data["usage"]))


def _total_tokens(usage: dict | None) -> int:
    if not usage:
        return 0
    total = usage.get("total_tokens")
    if not isinstance(total, int):
        total = sum(v for k in ("prompt_tokens", "completion_tokens")
                    if isinstance(v := usage.get(k), int))
    return max(0, total)
