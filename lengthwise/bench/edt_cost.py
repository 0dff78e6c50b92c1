"""``lengthwise bench edt-cost``: decode throughput with EDT on every request vs fixed temperature.

The same requests (Dolly prompts, ``ignore_eos`` so both arms decode exactly
the same number of tokens) are sent to one real worker, in rounds ordered
fixed, EDT, EDT, fixed (ABBA), so that slow drift in the machine's load, which
other processes share, falls equally on both arms. Target: EDT/fixed >= 0.95.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time

from lengthwise.bench.edt_workload import DOLLY_CATEGORIES, ChatJob, dolly_tasks, run_chat_jobs
from lengthwise.bench.settings import CostConfig
from lengthwise.common.edt_params import N_KEY, THETA_KEY

TARGET_RATIO = 0.95


async def _arm(base_url: str, model: str, cfg: CostConfig, prompts: list[str], edt: bool) -> dict:
    extra: dict = {"ignore_eos": True}
    if edt:
        extra["vllm_xargs"] = {THETA_KEY: cfg.theta, N_KEY: cfg.n}
    jobs = [
        ChatJob(p, cfg.max_tokens, cfg.temperature, seed=cfg.seed + i, extra=extra)
        for i, p in enumerate(prompts)
    ]
    start = time.perf_counter()
    results = await run_chat_jobs(base_url, model, jobs, cfg.concurrency)
    wall = time.perf_counter() - start
    tokens = sum(sum(r.completion_tokens) for r in results)
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def run_cost_benchmark(base_url: str, model: str, cfg: CostConfig, progress=print) -> dict:
    per_category = -(-cfg.requests // len(DOLLY_CATEGORIES))
    prompts = [t.prompt for t in dolly_tasks(per_category, seed=cfg.seed)][: cfg.requests]
    # Warm-up so neither arm pays for first-request effects.
    asyncio.run(_arm(base_url, model, CostConfig(**{**cfg.__dict__, "max_tokens": 8}), prompts[:4], True))
    runs: dict[str, list[dict]] = {"fixed": [], "edt": []}
    order = ["fixed", "edt", "edt", "fixed"] * cfg.rounds
    for arm in order:
        result = asyncio.run(_arm(base_url, model, cfg, prompts, arm == "edt"))
        runs[arm].append(result)
        progress(f"{arm:5s} {result['tokens']} tokens in {result['wall_s']:.1f} s = {result['tok_s']:.1f} tok/s")
    fixed_tok_s = sum(r["tokens"] for r in runs["fixed"]) / sum(r["wall_s"] for r in runs["fixed"])
    edt_tok_s = sum(r["tokens"] for r in runs["edt"]) / sum(r["wall_s"] for r in runs["edt"])
    ratio = edt_tok_s / fixed_tok_s
    return {
        "benchmark": "edt_cost",
        "model": model,
        "worker": base_url,
        "workload": {
            "requests_per_run": len(prompts),
            "max_tokens": cfg.max_tokens,
            "ignore_eos": True,
            "concurrency": cfg.concurrency,
            "temperature": cfg.temperature,
            "edt": {"theta": cfg.theta, "n": cfg.n},
            "order": order,
        },
        "fixed_tok_s": round(fixed_tok_s, 2),
        "edt_tok_s": round(edt_tok_s, 2),
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        # Relative spread of each arm's runs: when it is larger than |1 - ratio|,
        # the machine's load, not EDT, decided the ratio.
        "fixed_runs_rel_spread": round(
            statistics.pstdev([r["tok_s"] for r in runs["fixed"]]) / fixed_tok_s, 4
        ),
        "edt_runs_rel_spread": round(
            statistics.pstdev([r["tok_s"] for r in runs["edt"]]) / edt_tok_s, 4
        ),
        "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
    }
