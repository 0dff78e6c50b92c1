"""What the gateway sends a worker: the client's own JSON, with the gateway's additions.

The body is the client's JSON (every field vLLM knows reaches it unchanged), except:
- ``edt`` becomes vLLM's ``vllm_xargs`` (``edt_theta``, ``edt_n``), with the gateway-wide
  EDT default for requests that say nothing about EDT;
- a stream asks for usage (so the request log knows the real length), and the gateway
  drops that chunk again if the client did not ask for it;
- ``priority`` is the gateway's rank (band and length key, ``server.policy.engine_priority``)
  when the workers run vLLM's priority scheduling, and is removed otherwise.
"""

from __future__ import annotations

from typing import Any

from server.config import GatewayConfig
from server.errors import bad_request
from server.schemas import ChatCompletionRequest, CompletionRequest

Parsed = ChatCompletionRequest | CompletionRequest


def check_limits(cfg: GatewayConfig, parsed: Parsed) -> None:
    """The gateway's own input limits (400 in OpenAI format)."""
    if parsed.n > cfg.max_n:
        raise bad_request(f"n must be at most {cfg.max_n}", param="n", code="invalid_value")
    if isinstance(parsed, CompletionRequest):
        prompts = parsed.prompt
        is_batch = isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)
        if is_batch and len(prompts) > cfg.max_prompts_per_request:
            raise bad_request(f"at most {cfg.max_prompts_per_request} prompts per request",
                              param="prompt", code="invalid_value")


def upstream_body(cfg: GatewayConfig, raw: dict[str, Any],
                  parsed: Parsed) -> tuple[dict[str, Any], bool]:
    """The body for the worker (``priority`` is set per attempt), and whether to strip the
    usage chunk from the relayed stream."""
    body = dict(raw)
    explicit_edt = "edt" in body
    body.pop("edt", None)
    xargs: dict[str, Any] = {}
    client_xargs = parsed.vllm_xargs or {}
    says_edt = explicit_edt or any(k.startswith("edt_") for k in client_xargs)
    if not says_edt and cfg.edt_default:
        xargs.update(cfg.edt_default)
    xargs.update(client_xargs)
    if parsed.edt is not None:
        xargs.update(parsed.edt.as_xargs())
    if xargs:
        body["vllm_xargs"] = xargs
    else:
        body.pop("vllm_xargs", None)
    strip_usage = False
    if parsed.stream:
        options = dict(body.get("stream_options") or {})
        if not options.get("include_usage"):
            options["include_usage"] = True
            strip_usage = True
        body["stream_options"] = options
    body.pop("priority", None)
    return body, strip_usage
