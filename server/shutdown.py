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
2. once nothing is queued or in flight, or ``grace_s`` has passed, uvicorn's
   normal shutdown runs (close the listener, finish open responses, lifespan
   shutdown) and the process exits 0;
3. a second signal skips the drain (uvicorn's force exit).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.config import GatewayConfig
from server.http_protocol import protocol_class

log = logging.getLogger(__name__)

_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: FastAPI, grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config)
        self._app = app
        self.grace_s = grace_s
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
