"""Prompts with reference answers, and a bounded-concurrency client for vLLM's API.

Shared by the EDT quality evaluation and the EDT cost benchmark.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lengthwise.common.paths import shared_dir

DOLLY_CATEGORIES = ("summarization", "closed_qa", "information_extraction")


@dataclass(frozen=True)
class Task:
    task_id: str
    category: str
    prompt: str
    reference: str


def dolly_tasks(
    per_category: int,
    categories: Sequence[str] = DOLLY_CATEGORIES,
    seed: int = 0,
    path: Path | None = None,
) -> list[Task]:
    """A seeded sample of Dolly prompts (instruction + context) with reference answers."""
    path = path or shared_dir() / "prompts" / "dolly_validate.json"
    rows = json.loads(path.read_text())
    rng = random.Random(seed)
    tasks: list[Task] = []
    for category in categories:
        indexed = [(i, r) for i, r in enumerate(rows) if r.get("category") == category]
        rng.shuffle(indexed)
        for i, row in indexed[:per_category]:
            context = (row.get("context") or "").strip()
            instruction = row["instruction"].strip()
            prompt = f"{context}\n\n{instruction}" if context else instruction
            tasks.append(Task(f"dolly-{i}", category, prompt, row["response"].strip()))
    return tasks


@dataclass
class Completion:
    texts: list[str]
    completion_tokens: list[int]
    finish_reasons: list[str]
    latency_s: float


@dataclass
class ChatJob:
    prompt: str
    max_tokens: int
    temperature: float
    n: int = 1
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Merged into the request body, e.g. ``{"vllm_xargs": {...}, "ignore_eos": True}``."""


async def run_chat_jobs(
    base_url: str,
    model: str,
    jobs: Sequence[ChatJob],
    concurrency: int,
    timeout_s: float = 900.0,
) -> list[Completion]:
    """Send all jobs to ``{base_url}/v1/chat/completions``, at most ``concurrency`` at once.

    Per-choice token counts come from vLLM's ``return_token_ids`` (usage only
    gives the total over the ``n`` choices).
    """
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, job: ChatJob) -> Completion:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": job.prompt}],
            "max_tokens": job.max_tokens,
            "temperature": job.temperature,
            "n": job.n,
            "return_token_ids": True,
            **job.extra,
        }
        if job.seed is not None:
            body["seed"] = job.seed
        async with semaphore:
            start = time.perf_counter()
            resp = await client.post(f"{base_url}/v1/chat/completions", json=body)
            latency = time.perf_counter() - start
        if resp.status_code != 200:
            raise RuntimeError(f"worker answered {resp.status_code}: {resp.text[:500]}")
        choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
        return Completion(
            texts=[c["message"]["content"] or "" for c in choices],
            completion_tokens=[len(c.get("token_ids") or []) for c in choices],
            finish_reasons=[c.get("finish_reason") or "" for c in choices],
            latency_s=latency,
        )

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, job) for job in jobs)))
