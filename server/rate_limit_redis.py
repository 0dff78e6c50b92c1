"""Rate-limit buckets in Redis, shared by every gateway replica.

The same token buckets as ``server.rate_limit`` (refill limit / 60 per second up to a
minute's worth; a request takes one unit, its tokens are charged when it finishes),
updated atomically by Lua scripts on the Redis server, on the server's clock, so
replicas neither race each other nor disagree about time. A key's buckets live under
``lengthwise:ratelimit:{requests|tokens}:<sha256 of the API key>`` (the key itself is
never stored) and expire once they would be full again, so idle keys cost nothing.

Needs the ``redis`` extra (``pip install 'lengthwise[redis]'``). The gateway checks
that Redis answers when it starts and refuses to start otherwise. If Redis fails
later, requests are admitted (fail open, as Envoy's global rate limiting does by
default): a limiter outage should not become a gateway outage. Each such failure is
logged and counted in ``lengthwise_rate_limit_store_errors_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from server.rate_limit import limited

log = logging.getLogger(__name__)

KEY_PREFIX = "lengthwise:ratelimit:"

# Shared by both scripts: the bucket's level now, refilled since its last update.
_REFILL = """
local function refilled(key, cap, now)
  local v = redis.call('HMGET', key, 'level', 'updated')
  local level = tonumber(v[1]) or cap
  local updated = tonumber(v[2]) or now
  return math.min(cap, level + math.max(0, now - updated) * cap / 60.0)
end
local function store(key, cap, level, now)
  redis.call('HSET', key, 'level', string.format('%.17g', level),
             'updated', string.format('%.17g', now))
  -- gone once it would be full again: a missing bucket reads as full
  redis.call('EXPIRE', key, math.ceil((cap - level) * 60.0 / cap) + 1)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: requests bucket, tokens bucket. ARGV: requests limit, tokens limit (0: none).
# Returns {1} when admitted, else {0, what, seconds until allowed (as a string)}.
_ADMIT = _REFILL + """
local req_cap, tok_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
if tok_cap > 0 then
  local tokens = refilled(KEYS[2], tok_cap, now)
  if tokens <= 0 then
    return {0, 'tokens', string.format('%.6f', (1 - tokens) * 60.0 / tok_cap)}
  end
end
if req_cap > 0 then
  local requests = refilled(KEYS[1], req_cap, now)
  if requests < 1 then
    return {0, 'requests', string.format('%.6f', (1 - requests) * 60.0 / req_cap)}
  end
  store(KEYS[1], req_cap, requests - 1, now)
end
return {1}
"""

# KEYS: tokens bucket. ARGV: tokens limit, tokens to charge.
_CHARGE = _REFILL + """
local cap = tonumber(ARGV[1])
store(KEYS[1], cap, refilled(KEYS[1], cap, now) - tonumber(ARGV[2]), now)
return 1
"""


class RateLimitStoreUnavailable(RuntimeError):
    """Redis is configured for the rate limits but does not answer."""


def check_reachable(url: str, timeout_s: float = 2.0) -> None:
    """Raise ``RateLimitStoreUnavailable`` with a one-line reason unless Redis answers
    (for command-line start-up, before anything else is started)."""
    try:
        import redis
    except ImportError:
        raise RateLimitStoreUnavailable(
            "rate_limit_redis_url is set but the redis client is not installed: "
            "pip install 'lengthwise[redis]'") from None
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 (whatever the failure, Redis is not usable)
        raise RateLimitStoreUnavailable(
            f"cannot reach Redis at {_safe(url)} for the rate limits "
            f"(rate_limit_redis_url): {exc}") from None


def bucket_key(kind: str, api_key: str) -> str:
    return KEY_PREFIX + kind + ":" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()


class RedisRateLimiter:
    def __init__(self, url: str, requests_per_min: int | None, tokens_per_min: int | None,
                 timeout_s: float = 1.0,
                 on_error: Callable[[], None] = lambda: None) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise RateLimitStoreUnavailable(
                "rate_limit_redis_url is set but the redis client is not installed: "
                "pip install 'lengthwise[redis]'") from None
        self.url = url
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s)
        self._admit = self._redis.register_script(_ADMIT)
        self._charge = self._redis.register_script(_CHARGE)
        self._pending: set[asyncio.Task[None]] = set()
        #: called whenever Redis fails (the gateway counts these)
        self.on_error = on_error

    async def start(self) -> None:
        """Check that Redis answers; raises ``RateLimitStoreUnavailable`` otherwise."""
        try:
            await self._redis.ping()
        except Exception as exc:  # noqa: BLE001 (whatever the failure, Redis is not usable)
            raise RateLimitStoreUnavailable(
                f"cannot reach Redis at {_safe(self.url)} for the rate limits "
                f"(rate_limit_redis_url): {exc}") from None

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()

    async def admit(self, key: str) -> None:
        try:
            result: list[Any] = await self._admit(
                keys=[bucket_key("requests", key), bucket_key("tokens", key)],
                args=[self.requests_per_min or 0, self.tokens_per_min or 0])
        except Exception as exc:  # noqa: BLE001 (any Redis failure: fail open, see module doc)
            self._failed("admit", exc)
            return
        if int(result[0]) == 1:
            return
        what = _text(result[1])
        limit = self.tokens_per_min if what == "tokens" else self.requests_per_min
        raise limited(f"{what} per minute", limit, float(_text(result[2])))

    def charge_tokens(self, key: str, tokens: int) -> None:
        if self.tokens_per_min is None or tokens <= 0:
            return
        # Called as a response finishes, outside any coroutine of its own: charge in
        # the background; aclose() waits for what is still on its way.
        task = asyncio.get_running_loop().create_task(self._charge_now(key, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _charge_now(self, key: str, tokens: int) -> None:
        try:
            await self._charge(keys=[bucket_key("tokens", key)],
                               args=[self.tokens_per_min, tokens])
        except Exception as exc:  # noqa: BLE001
            self._failed("charge", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        log.warning("rate limit store (Redis at %s) failed to %s; request admitted: %r",
                    _safe(self.url), what, exc)
        self.on_error()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(url: str) -> str:
    """The URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
