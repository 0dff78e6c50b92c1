"""A health probe that makes the worker generate: one token of one completion.

vLLM's ``/health`` says the server and engine process are alive, not that the
engine still makes progress: an engine that accepts requests and never answers
passes it. A worker taken out after a failure is therefore put back only once
it has produced a real token within the health timeout.
"""

from __future__ import annotations

import httpx

#: vLLM ``priority`` of a probe (lower runs first): ahead of every request the gateway
#: sends (client bands reach -10^6 x 10^12), within vLLM's 64-bit integers.
PROBE_PRIORITY = -(2**62)


async def probe_generation(
    client: httpx.AsyncClient, url: str, model_cards: list[dict], timeout_s: float,
    priority: int | None = None,
) -> None:
    """Raises ``httpx.HTTPError`` (or ``ValueError``) unless ``url`` generates a token in time.

    ``priority``: vLLM's, for workers with priority scheduling, so a busy engine serves the
    probe before its waiting requests and a slow answer means a hung engine, not a queue."""
    if not model_cards:
        raise ValueError("the worker serves no model")
    body = {"model": str(model_cards[0]["id"]), "prompt": "ping", "max_tokens": 1,
            "temperature": 0.0}
    if priority is not None:
        body["priority"] = priority
    resp = await client.post(f"{url}/v1/completions", json=body, timeout=timeout_s)
    resp.raise_for_status()
    if not resp.json().get("choices"):
        raise ValueError("the probe completion has no choices")

