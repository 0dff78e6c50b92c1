"""Graceful shutdown: SIGTERM drains the gateway instead of dropping connections.

uvicorn's own SIGTERM handling closes the listening socket at once (new clients
get "connection refused", which a load balancer cannot tell from a crash) and
re-raises the signal on the way out, so the process never exits 0.
``DrainingServer`` changes that:

1. the first SIGTERM (or SIGINT) puts the dispatcher in draining mode: new
   requests get 503 with ``Retry-After`` and ``/health`` answers 503, so load
   balancers move traffic away, while queued and in-flight requests go on;
   Responses carry ``Connection: close`` from then on, so clients do not keep idle
   connections that the final close would race with;
2. once nothing is queued or in flight, or ``grace_s`` has passed, the listener
   is quiesced before it is closed: the kernel is told to ignore new connection
   attempts (``server.listen_gate``), and the connections it had already
   completed, whose clients may have sent a request, are accepted and answered
   (503) until the accept queue is empty and every connection has closed, for at
   most ``quiesce_s``. Closing the listener straight away made the kernel reset
   those queued connections, and uvicorn's shutdown closed connections accepted
   a moment earlier whose request was not yet read: either way a client that had
   sent its request got a reset and could not tell whether it was accepted.
   Now a client either gets a response or "connection refused" (never accepted);
3. then uvicorn's normal shutdown runs (close the listener, finish open
   responses, lifespan shutdown) and the process exits 0;
4. a second signal skips the drain (uvicorn's force exit).

What remains is HTTP/1.1's own keep-alive race: a client that keeps an idle
connection from before the SIGTERM, sends nothing on it for ``quiesce_s`` and
then writes a request just as the connection is closed sees the close, as with
any server's idle timeout. Every response while draining carries
``Connection: close``, so a client that sends anything during the drain is not
left holding such a connection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.config import GatewayConfig
from server.http_protocol import protocol_class
from server.listen_gate import accept_queue_length, refuse_new_connections

log = logging.getLogger(__name__)

_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A client whose connection the kernel completed sends its request within
# milliseconds; this only bounds the wait for ones that connect and stay silent.
DEFAULT_QUIESCE_S = 2.0
_QUIESCE_POLL_S = 0.01


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: FastAPI, grace_s: float,
        clock: Callable[[], float] = time.monotonic, quiesce_s: float = DEFAULT_QUIESCE_S,
    ) -> None:
        super().__init__(config)
        self._app = app
        self.grace_s = grace_s
        self.quiesce_s = quiesce_s
        self._clock = clock
        self._drain_requested = False
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only set flags; the event loop acts on them in on_tick.
        if sig in _DRAIN_SIGNALS and not self._drain_requested:
            self._drain_requested = True
            return
        # Second signal: stop now. Not recorded as a captured signal, so the exit stays clean.
        self.should_exit = True
        self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and not self.should_exit:
            self._advance_drain()
        should_exit = await super().on_tick(counter)
        if self._drain_deadline is not None:
            # Every response while draining closes its connection, so no client is left
            # holding an idle keep-alive connection to send a request on as the server closes it.
            headers = self.server_state.default_headers
            if (b"connection", b"close") not in headers:
                self.server_state.default_headers = [*headers, (b"connection", b"close")]
        return should_exit

    def _advance_drain(self) -> None:
        gateway = getattr(self._app.state, "gateway", None)
        if gateway is None:  # still starting up: nothing to drain
            self.should_exit = True
            return
        dispatcher = gateway.dispatcher
        if self._drain_deadline is None:
            dispatcher.draining = True
            self._drain_deadline = self._clock() + self.grace_s
            log.info("draining: %d in flight, %d queued, grace %.0f s",
                     dispatcher.in_flight, dispatcher.queue_depth(), self.grace_s)
        idle = dispatcher.in_flight == 0 and dispatcher.queue_depth() == 0
        if idle or self._clock() >= self._drain_deadline:
            if not idle:
                log.warning("drain grace period over: %d in flight, %d queued",
                            dispatcher.in_flight, dispatcher.queue_depth())
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._drain_deadline is not None and not self.force_exit:
            await self._quiesce_listeners()
        await super().shutdown(sockets)

    async def _quiesce_listeners(self) -> None:
        listeners = [sock for server in self.servers for sock in (server.sockets or ())]
        refused = [refuse_new_connections(sock) for sock in listeners]  # every one, no short cut
        if not all(refused):
            return  # new connections keep coming: waiting for an empty queue cannot end
        deadline = self._clock() + self.quiesce_s
        while self._clock() < deadline and not self.force_exit:
            queued = [accept_queue_length(sock) for sock in listeners]
            if not self.server_state.connections and all(q == 0 for q in queued):
                return
            await asyncio.sleep(_QUIESCE_POLL_S)
        log.info("closing the listener with %d connections open",
                 len(self.server_state.connections))


def serve_app(app: FastAPI, cfg: GatewayConfig, *, log_level: str = "info") -> None:
    """Run ``app`` on ``cfg.host:cfg.port`` until drained after SIGTERM (exit status 0)."""
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=False,
        lifespan="on", http=protocol_class(cfg.max_header_bytes, cfg.header_timeout_s),
        timeout_keep_alive=int(max(1, cfg.keep_alive_s)),
        # After the drain only idle or finishing connections remain; give them a moment.
        timeout_graceful_shutdown=max(1, int(cfg.shutdown_grace_s)),
    )
    DrainingServer(config, app, cfg.shutdown_grace_s).run()
