"""A health probe that makes the worker generate: one token of one completion.

vLLM's ``/health`` says the server and engine process are alive, not that the
engine still makes progress: an engine that accepts requests and never answers
passes it. A worker taken out after a failure is therefore put back only once
it has produced a real token within the health timeout.
"""

from __future__ import annotations

import httpx


async def probe_generation(
    client: httpx.AsyncClient, url: str, model_cards: list[dict], timeout_s: float
) -> None:
    """Raises ``httpx.HTTPError`` (or ``ValueError``) unless ``url`` generates a token in time."""
    if not model_cards:
        raise ValueError("the worker serves no model")
    body = {"model": str(model_cards[0]["id"]), "prompt": "ping", "max_tokens": 1,
            "temperature": 0.0}
    resp = await client.post(f"{url}/v1/completions", json=body, timeout=timeout_s)
    resp.raise_for_status()
    if not resp.json().get("choices"):
        raise ValueError("the probe completion has no choices")
