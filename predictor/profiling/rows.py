"""One CASTILLO-schema row from a prompt's sampled completions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from predictor.profiling.degeneration import row_degeneration
from predictor.profiling.prompt_files import ProfilePrompt


@dataclass(frozen=True)
class DecodingSettings:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int

    def fingerprint(self) -> str:
        return f"t={self.temperature}|p={self.top_p}|k={self.top_k}|max={self.max_tokens}"


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str
    prompt_tokens: int
    seconds: float


def sample_id_for(model: str, prompt_id: str, settings: DecodingSettings) -> str:
    key = f"{model}|{prompt_id}|{settings.fingerprint()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def castillo_row(prompt: ProfilePrompt, model: str, settings: DecodingSettings,
                 completions: list[Completion], gen_time: float) -> dict:
    """CASTILLO's columns plus the run's cap, finish reasons and the degeneration flag."""
    sizes = np.array([c.tokens for c in completions], dtype=float)
    p25, p50, p75, p99 = np.percentile(sizes, [25, 50, 75, 99]).tolist()
    longest = completions[int(np.argmax(sizes))]
    shortest = completions[int(np.argmin(sizes))]
    degenerate = row_degeneration(sizes.tolist(), settings.max_tokens)
    return {
        "sample_id": sample_id_for(model, prompt.prompt_id, settings),
        "prompt_id": prompt.prompt_id,
        "model": model,
        "dataset": prompt.dataset,
        "prompt_text": prompt.text,
        "input_size": int(completions[0].prompt_tokens),
        "output_sizes": [int(s) for s in sizes],
        "output_mean": float(sizes.mean()),
        "output_std": float(sizes.std()),  # population std, as CASTILLO
        "output_percentiles": {"p25": p25, "p50": p50, "p75": p75, "p99": p99},
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "temp": settings.temperature,
        "category": prompt.category,
        "gen_time": float(gen_time),
        "longest_response": longest.text,
        "shortest_response": shortest.text,
        "max_tokens": settings.max_tokens,
        "finish_reasons": [c.finish_reason for c in completions],
        "degenerate": degenerate is not None,
        "degenerate_reason": degenerate,
    }
