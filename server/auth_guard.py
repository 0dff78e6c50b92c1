"""Deny by default: with API keys configured, every HTTP path needs a key except the open ones.

The routes check keys themselves, but the framework's own endpoints
(``/openapi.json``, ``/docs``, ``/redoc``) and any route added later would not.
This ASGI middleware puts the check in front of everything, so an endpoint is
open only when it is listed here: ``/health`` always, ``/metrics`` unless the
operator asks for it to be guarded too.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth import ApiKeyAuth
from server.errors import GatewayError


class ApiKeyGuard:
    def __init__(self, app: ASGIApp, auth: ApiKeyAuth, open_paths: frozenset[str]) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.auth.enabled and scope["path"] not in self.open_paths:
            authorization = None
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            try:
                self.auth.check(authorization)
            except GatewayError as err:
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def open_paths(metrics_require_auth: bool) -> frozenset[str]:
    return frozenset({"/health"} if metrics_require_auth else {"/health", "/metrics"})
