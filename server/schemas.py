"""Request bodies of the OpenAI routes.

The models validate what the gateway itself relies on (model, prompt or
messages, length limits, streaming, EDT) and let every other field through:
the body forwarded to vLLM is the client's own JSON, so anything vLLM accepts
reaches it unchanged and anything it rejects comes back as vLLM's 400.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from lengthwise.common.edt_params import DEFAULT_N as EDT_DEFAULT_N
from lengthwise.common.edt_params import N_KEY as EDT_N_KEY
from lengthwise.common.edt_params import THETA_KEY as EDT_THETA_KEY

XArgValue = str | int | float | list[str | int | float]


class EDTParams(BaseModel):
    """Entropy-based dynamic temperature: ``T = T0 * n ** (theta / entropy)``; T0 = temperature.

    ``n`` defaults to the paper's N = 0.8, so ``{"theta": 0.5}`` alone is a complete
    request; it is always sent to the worker explicitly, whatever the worker's own default."""

    model_config = ConfigDict(extra="forbid")

    theta: float = Field(ge=0, allow_inf_nan=False)
    n: float = Field(EDT_DEFAULT_N, gt=0, lt=1, allow_inf_nan=False)

    def as_xargs(self) -> dict[str, float]:
        return {EDT_THETA_KEY: self.theta, EDT_N_KEY: self.n}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    max_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    user: str | None = None
    #: vLLM's client priority (lower runs first): the gateway orders by it before length
    priority: StrictInt = Field(0, ge=-1_000_000, le=1_000_000)
    edt: EDTParams | None = None
    vllm_xargs: dict[str, XArgValue] | None = None

    @field_validator("vllm_xargs")
    @classmethod
    def _finite_xargs(cls, value: dict[str, XArgValue] | None) -> dict[str, XArgValue] | None:
        for key, item in (value or {}).items():
            items = item if isinstance(item, list) else [item]
            if any(isinstance(x, float) and not math.isfinite(x) for x in items):
                raise ValueError(f"vllm_xargs.{key} must be finite")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0)

    def length_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_size(self) -> tuple[int, int]:
        """(characters of text, known token count) of the prompt; see ``CompletionRequest``."""
        chars = 0
        for m in self.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif isinstance(m.content, list):
                chars += sum(len(str(part.get("text", ""))) for part in m.content)
        return chars, 0


TokenIds = list[StrictInt]


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: StrictInt | None = Field(None, ge=0)
    echo: StrictBool | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    def length_cap(self) -> int | None:
        return self.max_tokens

    def prompt_size(self) -> tuple[int, int]:
        """(characters of text, tokens given as ids) over every prompt of the request:
        the gateway estimates a text's tokens, and token-id prompts say theirs."""
        p = self.prompt
        if isinstance(p, str):
            return len(p), 0
        if all(isinstance(x, str) for x in p):
            return sum(len(x) for x in p), 0  # type: ignore[arg-type]
        if all(isinstance(x, int) for x in p):
            return 0, len(p)
        return 0, sum(len(x) for x in p)  # type: ignore[arg-type]

    def prompt_texts(self) -> list[str]:
        """One text per prompt, for the length predictor.

        Token-id prompts have no text here; the predictor sees an empty string
        and answers with its prompt-independent estimate.
        """
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, str) for x in p):
            return list(p)  # type: ignore[arg-type]
        if all(isinstance(x, int) for x in p):
            return [""]
        return ["" for _ in p]


Endpoint = Literal["chat", "completions"]
