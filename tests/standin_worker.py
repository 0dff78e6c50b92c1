"""A real stand-in vLLM server process for fast gateway tests.

It speaks the slice of vLLM's OpenAI API the gateway uses (``/health``,
``/v1/models``, ``/metrics``, ``/v1/chat/completions``, ``/v1/completions``,
streaming with ``data: [DONE]`` and ``stream_options.include_usage``, vLLM's
error bodies) over real HTTP, and can be told to misbehave:

``POST /control`` with any of
  ``mode``: ``ok`` | ``fail`` (500 on completions) | ``stall`` (accept, never answer)
            | ``die`` (exit on the next completion request)
            | ``die_mid_stream`` (exit after a few streamed tokens)
  ``stall_health``: bool (``/health`` never answers)
  ``fail_marker``: a string; completions whose prompt holds it get 500 (``null``: none)
  ``token_delay_s``: seconds per generated token
  ``max_num_seqs``: requests it runs at once (``null``: unlimited); the rest wait in a
            queue ordered by ``(priority, arrival)``, as vLLM's priority scheduling
  ``metrics_progress``: bool (export ``vllm:generation_tokens_total``; default true)
  ``kv_blocks``, ``block_size``: the KV cache it reports in ``vllm:cache_config_info``
            (``null``: not reported); usage counts each running request's prompt and
            tokens so far
``GET /control`` returns the counters: ``running``, ``waiting``, ``aborted``,
``completed``, ``max_running``, the last received bodies (priority, vllm_xargs, ...),
``request_ids``: their ``X-Request-Id`` headers, and ``started``: the last requests'
texts in the order they started running.

``--api-key KEY`` makes it refuse ``/v1/*`` requests without ``Authorization: Bearer
KEY`` with vLLM's 401 (``/health`` and ``/metrics`` stay open, as in vLLM).

Completion length: ``LEN=<n>`` in the prompt, else ``--default-len``, capped by
``max_tokens`` (finish_reason ``length`` when capped, else ``stop``).

Run: ``python tests/standin_worker.py --port 9001 --model standin``
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import re
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

LEN_RE = re.compile(r"LEN=(\d+)")


def build_app(model: str, default_len: int, token_delay_s: float, max_model_len: int,
              api_key: str | None = None) -> FastAPI:
    app = FastAPI()
    state: dict[str, Any] = {
        "mode": "ok", "stall_health": False, "token_delay_s": token_delay_s,
        "running": 0, "max_running": 0, "aborted": 0, "completed": 0, "received": [],
        "max_num_seqs": None, "waiting": 0, "kv_blocks": None, "block_size": 16,
        "kv_used": 0, "started": [], "request_ids": [], "unauthorized": 0,
        "fail_marker": None, "generation_tokens": 0, "metrics_progress": True,
    }
    waiters: list[tuple[int, int, asyncio.Future]] = []
    arrivals = iter(range(10**12))

    def grant() -> None:
        while waiters and (state["max_num_seqs"] is None
                           or state["running"] < state["max_num_seqs"]):
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                state["running"] += 1
                future.set_result(None)

    async def take_slot(priority: int, text: str) -> None:
        if waiters or not (state["max_num_seqs"] is None
                           or state["running"] < state["max_num_seqs"]):
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(waiters, (priority, next(arrivals), future))
            state["waiting"] += 1
            try:
                grant()
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    free_slot()
                raise
            finally:
                state["waiting"] -= 1
        else:
            state["running"] += 1
        state["max_running"] = max(state["max_running"], state["running"])
        state["started"] = (state["started"] + [text])[-200:]

    def free_slot() -> None:
        state["running"] -= 1
        grant()

    def error(status: int, message: str, type_: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": type_, "param": None,
                                       "code": status}}, status_code=status)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        if state["stall_health"]:
            await asyncio.sleep(3600)
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                            "owned_by": "vllm", "root": model,
                                            "max_model_len": max_model_len}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        labels = f'engine="0",model_name="{model}"'
        capacity = (state["kv_blocks"] * state["block_size"]) if state["kv_blocks"] else None
        usage = (state["kv_used"] / capacity if capacity else state["running"] / 100.0)
        text = (
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {min(1.0, usage)}\n"
            f'vllm:num_requests_running{{{labels}}} {state["running"]}\n'
            f'vllm:num_requests_waiting{{{labels}}} {state["waiting"]}\n'
        )
        if state["metrics_progress"]:
            text += f'vllm:generation_tokens_total{{{labels}}} {state["generation_tokens"]}\n'
        if capacity:
            text += (f'vllm:cache_config_info{{block_size="{state["block_size"]}",'
                     f'engine="0",num_gpu_blocks="{state["kv_blocks"]}"}} 1.0\n')
        return PlainTextResponse(text)

    @app.post("/control")
    async def control(request: Request) -> dict:
        state.update(await request.json())
        grant()
        return {k: v for k, v in state.items() if k != "received"}

    @app.get("/control")
    async def control_state() -> dict:
        return state

    async def completion(request: Request, chat: bool):
        body = await request.json()
        state["received"] = (state["received"] + [body])[-200:]
        state["request_ids"] = (state["request_ids"]
                                + [request.headers.get("x-request-id")])[-200:]
        mode = state["mode"]
        if mode == "die":
            os._exit(1)
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "fail":
            return error(500, "stand-in told to fail", "InternalServerError")
        if body.get("model") != model:
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if chat:
            text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        else:
            prompt = body.get("prompt")
            text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        if state["fail_marker"] and state["fail_marker"] in text:
            return error(500, "stand-in told to fail this prompt", "InternalServerError")
        prompt_tokens = max(1, len(text.split()))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
            return error(400, f"This model's maximum context length is {max_model_len} tokens.",
                         "BadRequestError")
        found = LEN_RE.search(text)
        wanted = int(found.group(1)) if found else default_len
        n_tokens = min(wanted, max_tokens) if max_tokens else wanted
        finish = "length" if max_tokens is not None and wanted > max_tokens else "stop"
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n_tokens * n,
                 "total_tokens": prompt_tokens + n_tokens * n}
        delay = state["token_delay_s"]

        def piece(i: int) -> str:
            return f" t{i}"

        await take_slot(int(body.get("priority") or 0), text)
        kv = [prompt_tokens]
        state["kv_used"] += prompt_tokens

        def account_token() -> None:
            kv[0] += n
            state["kv_used"] += n
            state["generation_tokens"] += n

        def end() -> None:
            state["kv_used"] -= kv[0]
            free_slot()

        if not body.get("stream"):
            try:
                for _ in range(n_tokens):
                    await asyncio.sleep(delay)
                    account_token()
                    if await request.is_disconnected():
                        state["aborted"] += 1
                        return PlainTextResponse("", status_code=499)
                state["completed"] += 1
            finally:
                end()
            out = "".join(piece(i) for i in range(n_tokens))
            if chat:
                choices = [{"index": k, "message": {"role": "assistant", "content": out},
                            "logprobs": None, "finish_reason": finish} for k in range(n)]
            else:
                choices = [{"index": k, "text": out, "logprobs": None, "finish_reason": finish}
                           for k in range(n)]
            return JSONResponse({"id": rid, "object": "chat.completion" if chat else
                                 "text_completion", "created": created, "model": model,
                                 "choices": choices, "usage": usage})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(k: int, i: int | None, finish_reason: str | None) -> str:
            if chat:
                delta = {"content": piece(i)} if i is not None else {}
                if i == 0:
                    delta = {"role": "assistant", **delta}
                choice = {"index": k, "delta": delta, "logprobs": None,
                          "finish_reason": finish_reason}
            else:
                choice = {"index": k, "text": piece(i) if i is not None else "",
                          "logprobs": None, "finish_reason": finish_reason}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                          "model": model, "choices": [choice]}) + "\n\n"

        async def events():
            finished = False
            try:
                for i in range(n_tokens):
                    await asyncio.sleep(delay)
                    account_token()
                    if state["mode"] == "die_mid_stream" and i >= 2:
                        os._exit(1)
                    last = i == n_tokens - 1
                    for k in range(n):
                        yield chunk(k, i, finish if last else None)
                if n_tokens == 0:
                    for k in range(n):
                        yield chunk(k, None, finish)
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                                 "model": model, "choices": [],
                                                 "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"
                finished = True
                state["completed"] += 1
            finally:
                end()
                if not finished:
                    state["aborted"] += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await completion(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await completion(request, chat=False)

    if api_key is not None:
        return _KeyCheck(app, api_key, state)  # type: ignore[return-value]
    return app


class _KeyCheck:
    """vLLM's ``--api-key``: ``/v1/*`` needs ``Authorization: Bearer KEY``, else 401.
    Plain ASGI (not Starlette's BaseHTTPMiddleware, which hides client disconnects)."""

    def __init__(self, app: FastAPI, key: str, state: dict[str, Any]) -> None:
        self.app, self.key, self.state = app, key, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.key}":
                self.state["unauthorized"] += 1
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="standin")
    parser.add_argument("--default-len", type=int, default=8)
    parser.add_argument("--token-delay-s", type=float, default=0.005)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    app = build_app(args.model, args.default_len, args.token_delay_s, args.max_model_len,
                    args.api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
