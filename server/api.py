"""OpenAI-compatible routes: HTTP in, ``CompletionService`` call, HTTP out.

Bodies are read and parsed here rather than by FastAPI, so every failure
(oversized, slow, invalid UTF-8, malformed or deeply nested JSON, wrong types)
gets a precise OpenAI-format 400/413 instead of a framework error, and so the
exact client JSON, unknown fields included, can be forwarded to vLLM.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from server.errors import GatewayError, bad_request, from_validation_error, json_response
from server.openapi_schema import inline_body_schema
from server.rate_limit import charge_when_finished
from server.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter()


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_body_schema(model)}},
        }
    }


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": desc, "content": {"application/json": {}}}
    for code, desc in [(400, "Invalid request"), (401, "Missing or wrong API key"),
                       (404, "Unknown model"), (413, "Body too large"),
                       (429, "Queue full (see Retry-After)"), (503, "No healthy worker")]
}


async def read_json_body(request: Request, max_bytes: int, timeout_s: float) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise _too_large(max_bytes)
        except ValueError:
            raise bad_request("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
    except TimeoutError:
        raise bad_request("the request body was not received in time",
                          code="body_timeout") from None
    raw = b"".join(chunks)
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the request body is not valid UTF-8", code="invalid_encoding") from None
    try:
        data = json.loads(text, parse_constant=_reject_non_json_constant)
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(data):
        # Python's json accepts an unpaired "\ud800" escape, but no UTF-8 encoder (ours to
        # the worker included) can write it back out.
        raise bad_request("the request body holds an unpaired UTF-16 surrogate escape",
                          code="invalid_encoding")
    return data


def _reject_non_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_large(max_bytes: int) -> GatewayError:
    return GatewayError(413, f"the request body exceeds {max_bytes} bytes",
                        code="request_too_large")


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None


async def handle_completion(request: Request, endpoint: str, model: type[BaseModel]) -> Response:
    """One completion request, from HTTP request to response (also called by
    ``server.fast_lane`` without FastAPI in between)."""
    gw = request.app.state.gateway
    key = gw.auth.check(request.headers.get("authorization"))
    limiter = request.app.state.rate_limiter
    await limiter.admit(key)
    data = await read_json_body(request, gw.cfg.max_body_bytes, gw.cfg.body_read_timeout_s)
    parsed = _parse(model, data)
    response = await gw.service.handle(endpoint, data, parsed, request.receive)
    if limiter.tokens_per_min is not None:
        charge_when_finished(response, lambda tokens: limiter.charge_tokens(key, tokens))
    return response


#: path -> (endpoint name, body model): the routes below and ``server.fast_lane``
COMPLETION_ROUTES: dict[str, tuple[str, type[BaseModel]]] = {
    "/v1/chat/completions": ("chat", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
}


@router.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest),
             responses=_ERROR_RESPONSES)
async def chat_completions(request: Request) -> Response:
    return await handle_completion(request, *COMPLETION_ROUTES["/v1/chat/completions"])


@router.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest),
             responses=_ERROR_RESPONSES)
async def completions(request: Request) -> Response:
    return await handle_completion(request, *COMPLETION_ROUTES["/v1/completions"])


@router.get("/v1/models", responses=_ERROR_RESPONSES)
async def list_models(request: Request) -> Response:
    gw = request.app.state.gateway
    gw.auth.check(request.headers.get("authorization"))
    cards = gw.pool.model_cards()
    if not cards:
        data = [{"id": m, "object": "model", "created": int(time.time()), "owned_by": "vllm"}
                for m in sorted(gw.pool.served_models())]
    else:
        data = cards
    return json_response({"object": "list", "data": data})


@router.get("/health", responses={503: {"description": "No healthy worker, or draining"}})
async def health(request: Request) -> Response:
    gw = request.app.state.gateway
    healthy = sorted(gw.pool.healthy_ids())
    body = {
        "status": "ok" if healthy and not gw.dispatcher.draining else "unavailable",
        "healthy_workers": len(healthy),
        "workers": len(gw.pool.workers),
        "queue_depth": gw.dispatcher.queue_depth(),
        "in_flight": gw.dispatcher.in_flight,
        "draining": gw.dispatcher.draining,
    }
    if body["status"] != "ok":
        return json_response(
            {**body, "error": {"message": "no healthy worker" if not healthy else "draining",
                               "type": "service_unavailable_error", "param": None,
                               "code": "unavailable"}},
            503,
        )
    return json_response(body)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    gw = request.app.state.gateway
    if gw.cfg.metrics_require_auth:
        gw.auth.check(request.headers.get("authorization"))
    payload = gw.metrics.render(
        lambda: gw.metrics.sync_workers(gw.pool, gw.dispatcher.queue_depth(),
                                        gw.dispatcher.policy.name)
    )
    return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")
