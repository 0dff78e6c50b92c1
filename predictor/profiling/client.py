"""Samples completions from any OpenAI-compatible endpoint (vLLM, the Lengthwise gateway, ...)."""

from __future__ import annotations

import asyncio
import time

import httpx

from predictor.profiling.rows import Completion, DecodingSettings

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class PromptRejected(Exception):
    """The endpoint refused the prompt itself (e.g. prompt + max_tokens over the context)."""


class EndpointUnavailable(Exception):
    """Retries ran out on transport errors or 5xx/429 answers.

    Retries back off to 30 s apart, so a worker restart (35 s to 2.5 min on CPU) is waited out.
    """


class CompletionClient:
    """One completion per call; token counts come from the server's ``usage``.

    One request per sample (``n=1``) because ``usage.completion_tokens`` is exact per
    request, while with ``n>1`` the OpenAI response gives only the sum over choices.
    Parallel requests keep the worker busy instead; vLLM's prefix cache shares the prompt.
    """

    def __init__(self, target: str, model: str, settings: DecodingSettings,
                 timeout_s: float = 900.0, retries: int = 12, api_key: str | None = None):
        base = target.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self.settings = settings
        self.retries = retries
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0),
                                       headers=headers,
                                       limits=httpx.Limits(max_connections=256))

    async def close(self) -> None:
        await self._http.aclose()

    def body(self, text: str) -> dict:
        s = self.settings
        return {"model": self.model, "messages": [{"role": "user", "content": text}],
                "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
                "top_k": s.top_k, "n": 1, "stream": False}

    async def complete(self, text: str) -> Completion:
        delay = 1.0
        last_error = ""
        for _attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                response = await self._http.post(self.url, json=self.body(text))
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    data = response.json()
                    choice = data["choices"][0]
                    usage = data.get("usage") or {}
                    return Completion(
                        text=(choice.get("message") or {}).get("content") or "",
                        tokens=int(usage["completion_tokens"]),
                        finish_reason=str(choice.get("finish_reason")),
                        prompt_tokens=int(usage["prompt_tokens"]),
                        seconds=time.perf_counter() - started)
                if response.status_code not in RETRYABLE_STATUS:
                    raise PromptRejected(f"{response.status_code}: {response.text[:300]}")
                last_error = f"{response.status_code}: {response.text[:200]}"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise EndpointUnavailable(last_error)
