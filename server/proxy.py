"""Talking to one vLLM worker: one attempt of one request, and SSE passthrough.

An attempt either yields a complete answer (non-streaming), an opened stream
whose first event has already arrived (streaming), a worker's 4xx answer to
pass on, or raises :class:`UpstreamFailure` (connection refused, 5xx, timeout,
stream cut before its first event). Nothing has reached the client when
``UpstreamFailure`` is raised, so the caller may retry on another worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.errors import error_body

DONE = b"[DONE]"


class UpstreamFailure(Exception):
    """The attempt failed before any byte reached the client."""

    def __init__(self, reason: str, *, worker_down: bool, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: the connection was refused or cut: the worker is likely down (take it out now)
        self.worker_down = worker_down
        #: the worker did not answer in time
        self.timed_out = timed_out


@dataclass(slots=True)
class UpstreamReply:
    """A complete non-streaming answer, or a worker's error answer (any mode)."""

    status: int
    body: bytes
    content_type: str


@dataclass(slots=True)
class StreamStats:
    """What the gateway learns while relaying a stream."""

    first_token_at: float | None = None
    token_events: int = 0
    usage: dict[str, Any] | None = None
    finish_reasons: dict[int, str | None] = field(default_factory=dict)
    saw_done: bool = False
    error: dict[str, Any] | None = None


class SSEInspector:
    """Splits a byte stream into SSE events, records stats, and drops the usage chunk the
    gateway asked for on the client's behalf (so the client sees exactly what vLLM sends
    for its own options)."""

    def __init__(self, clock: Callable[[], float], strip_usage_chunk: bool) -> None:
        self.clock = clock
        self.strip_usage_chunk = strip_usage_chunk
        self.stats = StreamStats()
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """Complete events in ``chunk`` (plus earlier leftovers) to forward, as bytes."""
        self._buffer += chunk
        if b"\n\n" not in self._buffer:
            return b""
        *events, self._buffer = self._buffer.split(b"\n\n")
        out = []
        for event in events:
            if self._inspect(event):
                out.append(event)
                out.append(b"\n\n")
        return b"".join(out)

    def _inspect(self, event: bytes) -> bool:
        if not event.startswith(b"data:"):
            return True
        payload = event[5:].strip()
        if payload == DONE:
            self.stats.saw_done = True
            return True
        try:
            data = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(data, dict):
            return True
        if "error" in data:
            self.stats.error = data["error"] if isinstance(data["error"], dict) else {}
            return True
        choices = data.get("choices") or []
        usage = data.get("usage")
        if usage:
            self.stats.usage = usage
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if self.stats.first_token_at is None:
                self.stats.first_token_at = self.clock()
            self.stats.token_events += 1
            reason = choice.get("finish_reason")
            if reason is not None:
                self.stats.finish_reasons[int(choice.get("index", 0))] = reason
        # the usage chunk the gateway asked for on the client's behalf is dropped
        return not (usage and not choices and self.strip_usage_chunk)

    @property
    def has_event(self) -> bool:
        return self.stats.first_token_at is not None or self.stats.saw_done or (
            self.stats.error is not None
        )


def error_event(message: str, code: str) -> bytes:
    body = error_body(message, "service_unavailable_error", None, code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


#: Idle upstream connections are dropped before the worker's own keep-alive timeout
#: (uvicorn's, vLLM's: 5 s) could close one just as a request is written on it.
UPSTREAM_KEEPALIVE_S = 3.0


def upstream_session(headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """The pooled session for non-streaming completions (one per gateway, unbounded pool:
    the dispatcher already bounds what is in flight). ``headers`` go with every request
    (the workers' API key).

    aiohttp rather than httpx here: per request it costs ~0.4 ms of CPU against httpx's
    ~1.8 ms (measured on this 2-core machine), and at low load that CPU is the gateway's
    added latency (and, on a CPU worker, taken from the worker)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
    sent = aiohttp.TraceConfig()
    sent.on_request_chunk_sent.append(_call_on_sent)
    return aiohttp.ClientSession(connector=connector, trust_env=False, trace_configs=[sent],
                                 headers=headers)


async def _call_on_sent(_session: aiohttp.ClientSession, context: Any, _params: Any) -> None:
    # ``post_complete``'s ``on_sent``, passed as the request's trace context: the body is
    # one bytes chunk, so once it is sent the whole request is on the wire.
    on_sent = context.trace_request_ctx
    if on_sent is not None:
        on_sent()


async def post_complete(
    session: aiohttp.ClientSession, url: str, body: dict, total_timeout_s: float,
    connect_timeout_s: float, on_sent: Callable[[], None] | None = None,
    headers: dict[str, str] | None = None,
) -> UpstreamReply:
    """Non-streaming attempt: the whole answer, or ``UpstreamFailure``.

    ``on_sent`` is called once the request is on the wire (needs ``upstream_session``)."""
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode("utf-8")
    timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s)
    try:
        async with session.post(url, data=payload, headers={**_JSON_HEADERS, **(headers or {})},
                                timeout=timeout,
                                trace_request_ctx=on_sent) as resp:
            content = await resp.read()
            status, content_type = resp.status, resp.headers.get("content-type", "")
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamFailure(f"cannot connect: {exc!r}", worker_down=True) from None
    except aiohttp.ConnectionTimeoutError:
        # A full accept backlog times out a connect as a dead host does: counted as one
        # failure of a run (outlier detection), not taken for a worker that is down.
        raise UpstreamFailure("cannot connect: timed out", worker_down=False,
                              timed_out=True) from None
    except TimeoutError:
        raise UpstreamFailure("worker timed out", worker_down=False, timed_out=True) from None
    except aiohttp.ClientError as exc:
        # The connection was cut: most likely the worker died. Out until a probe shows
        # it generates again (the next health round, if it was a one-off).
        raise UpstreamFailure(f"transport error: {exc!r}", worker_down=True) from None
    if status >= 500:
        raise UpstreamFailure(f"worker answered {status}", worker_down=False)
    return UpstreamReply(status, content, content_type)


_JSON_HEADERS = {"content-type": "application/json"}


@dataclass(slots=True)
class OpenStream:
    response: httpx.Response
    chunks: AsyncIterator[bytes]
    inspector: SSEInspector
    #: events already read (at least the first one), not yet sent to the client
    pending: bytes

    async def aclose(self) -> None:
        # Closing the connection is what makes vLLM abort the request and free its KV cache.
        await self.response.aclose()


async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    *,
    connect_timeout_s: float,
    first_event_timeout_s: float,
    inspector: SSEInspector,
    on_sent: Callable[[], None] | None = None,
    headers: dict[str, str] | None = None,
) -> OpenStream | UpstreamReply:
    """Streaming attempt: returns once the first event is in hand (or the worker's 4xx).

    ``on_sent`` is called when the worker has accepted the request (its headers are in),
    while the first token is still being computed."""
    timeout = httpx.Timeout(None, connect=connect_timeout_s)
    request = client.build_request("POST", url, json=body, timeout=timeout, headers=headers)
    response: httpx.Response | None = None
    try:
        async with asyncio.timeout(first_event_timeout_s):
            response = await client.send(request, stream=True)
            if on_sent is not None:
                on_sent()
            if response.status_code != 200:
                content = await response.aread()
                await response.aclose()
                if response.status_code >= 500:
                    raise UpstreamFailure(
                        f"worker answered {response.status_code}", worker_down=False
                    )
                return UpstreamReply(
                    response.status_code, content, response.headers.get("content-type", "")
                )
            chunks = response.aiter_raw()
            pending = b""
            while not inspector.has_event:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    raise UpstreamFailure("stream ended before its first event", worker_down=False)
                pending += inspector.feed(chunk)
            return OpenStream(response, chunks, inspector, pending)
    except UpstreamFailure:
        if response is not None:
            await response.aclose()
        raise
    except TimeoutError:
        if response is not None:
            await response.aclose()
        raise UpstreamFailure("no first event before the timeout", worker_down=False,
                              timed_out=True) from None
    except httpx.ConnectTimeout:
        raise UpstreamFailure("cannot connect: timed out", worker_down=False,
                              timed_out=True) from None
    except httpx.ConnectError as exc:
        raise UpstreamFailure(f"cannot connect: {exc!r}", worker_down=True) from None
    except httpx.HTTPError as exc:
        if response is not None:
            await response.aclose()
        raise UpstreamFailure(f"transport error: {exc!r}", worker_down=True) from None
    except BaseException:
        if response is not None:
            await response.aclose()
        raise


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client has gone away (the request body is already consumed)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ProxyStreamResponse(Response):
    """An ASGI response relaying an ``OpenStream`` to the client.

    It watches for the client's disconnect itself (whatever the server's ASGI
    version), so a client that leaves mid-stream closes the upstream connection
    at once, and vLLM aborts the request. ``on_finish(outcome)`` runs exactly once:
    ``"ok"``, ``"client_disconnected"``, ``"stream_timeout"`` or ``"upstream_error"``.
    """

    def __init__(
        self,
        stream: OpenStream,
        headers: dict[str, str],
        idle_timeout_s: float,
        on_finish: Callable[[str], Awaitable[None] | None],
    ) -> None:
        # Starlette's Response.__init__ is skipped on purpose: headers are sent by hand.
        self.status_code = 200
        self.background = None
        self.raw_headers = []
        self.stream = stream
        self.extra_headers = headers
        self.idle_timeout_s = idle_timeout_s
        self.on_finish = on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = "ok"
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.extra_headers.items()]
        relay = asyncio.ensure_future(self._relay(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            done, _ = await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if relay in done:
                outcome = relay.result()
            else:
                outcome = "client_disconnected"
        except OSError:
            outcome = "client_disconnected"
        except asyncio.CancelledError:
            outcome = "client_disconnected"
            raise
        finally:
            for task in (relay, watcher):
                task.cancel()
            await asyncio.gather(relay, watcher, return_exceptions=True)
            await self.stream.aclose()
            result = self.on_finish(outcome)
            if result is not None:
                await result

    async def _relay(self, send: Send) -> str:
        stream = self.stream
        inspector = stream.inspector
        try:
            if stream.pending:
                await send({"type": "http.response.body", "body": stream.pending, "more_body": True})
                stream.pending = b""
            while not inspector.stats.saw_done:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        chunk = await stream.chunks.__anext__()
                except StopAsyncIteration:
                    break
                out = inspector.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except OSError:
            return "client_disconnected"
        except TimeoutError:
            await self._send_error(send, "the worker stopped sending tokens", "stream_timeout")
            return "stream_timeout"
        except httpx.HTTPError:
            await self._send_error(send, "the worker connection broke mid-stream", "upstream_error")
            return "upstream_error"
        if not inspector.stats.saw_done:
            await self._send_error(send, "the worker ended the stream early", "upstream_error")
            return "upstream_error"
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return "ok" if inspector.stats.error is None else "upstream_error"

    @staticmethod
    async def _send_error(send: Send, message: str, code: str) -> None:
        try:
            await send({"type": "http.response.body", "body": error_event(message, code),
                        "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
