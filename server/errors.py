"""OpenAI-format errors: ``{"error": {"message", "type", "param", "code"}}``.

The gateway answers only with 400, 401, 404, 413, 429 and 503. FastAPI's own 422
becomes 400, and anything unexpected becomes 503 rather than a 500, so a client
always gets a body it can parse and a status it can act on.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class GatewayError(Exception):
    """An error the gateway answers with; raise it anywhere in request handling."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self, extra_headers: dict[str, str] | None = None) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        return json_response(self.body(), self.status, headers)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(content, ensure_ascii=False, allow_nan=False).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def from_validation_error(exc: ValidationError | RequestValidationError) -> GatewayError:
    """The first pydantic error as a 400 naming the offending parameter."""
    errors = exc.errors()
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    return bad_request(f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def upstream_error_status(status: int) -> int:
    """Map a worker's 4xx to one of ours (vLLM answers 400/404, sometimes 422)."""
    if status in (400, 401, 404, 413, 429):
        return status
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        if status == 405:
            return GatewayError(404, f"{exc.detail}", code="method_not_allowed").response()
        if status not in _TYPES:
            status = 400 if status < 500 else 503
        return GatewayError(status, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return unexpected_error(exc)


def unexpected_error(exc: Exception) -> Response:
    """Never a 500: log the bug, tell the client to retry."""
    log.exception("unexpected error while handling a request", exc_info=exc)
    return GatewayError(
        503, f"internal gateway error: {type(exc).__name__}", code="internal_error",
        headers={"Retry-After": "1"},
    ).response()
