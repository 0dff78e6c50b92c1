"""What the optional second stage buys on the test split, and what it costs per batch.

Rerun with ``lengthwise bench second-stage`` (writes reports/predictor_second_stage.json)
after ``lengthwise predictor ensure`` and ``lengthwise predictor train-second-stage``.

Quality: the first stage and the second stage, each evaluated by
:func:`predictor.evaluate.evaluate` on the test split (the artifact's held-out prompt
group, which neither trained on), side by side, per corpus and corpus-balanced.
Cost: ``refine_batch`` over real test prompts in batches of 1, 8 and 32, one thread,
wall and process CPU time per batch, and CPU seconds per request; the machine's load
average is recorded, since on a shared machine wall time includes waiting for a core.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from predictor.api import CastilloLengthPredictor
from predictor.artifact import default_artifact_dir, split_holdout
from predictor.baselines import Baselines
from predictor.evaluate import evaluate
from predictor.loader import load_castillo
from predictor.refine import SecondStage, second_stage_dir

BATCH_SIZES = (1, 8, 32)
#: requests timed per batch size (so every size embeds about as many prompts)
REQUESTS_PER_SIZE = 192
QUALITY_KEYS = ("rows", "kendall_tau_mean", "kendall_tau_single", "mae_tokens", "p90_coverage",
                "balanced", "by_dataset", "capped_mean", "without_degenerate")


def batch_cost(stage: SecondStage, prompts: list[str], models: list[str],
               sizes=BATCH_SIZES, requests=REQUESTS_PER_SIZE, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    stage.refine_batch(prompts[:2], models[:2])  # first call pays lazy imports
    out = {}
    for size in sizes:
        wall, cpu = [], []
        for _ in range(max(1, requests // size)):
            rows = rng.choice(len(prompts), size=size, replace=False)
            start, start_cpu = time.perf_counter(), time.process_time()
            stage.refine_batch([prompts[i] for i in rows], [models[i] for i in rows])
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start)
        wall_ms, cpu_s = np.asarray(wall) * 1000.0, np.asarray(cpu)
        out[str(size)] = {"batches": len(wall),
                          "wall_p50_ms": float(np.percentile(wall_ms, 50)),
                          "wall_p99_ms": float(np.percentile(wall_ms, 99)),
                          "cpu_seconds_per_request": float(cpu_s.sum() / (len(cpu_s) * size)),
                          "load_average_1m": os.getloadavg()[0]}
    return out


def run_second_stage_study(source: Path | str | None = None, artifact: Path | None = None,
                           latency_requests: int = 300) -> dict:
    artifact = Path(artifact or default_artifact_dir())
    _, test = split_holdout(load_castillo(source))
    first = CastilloLengthPredictor.from_directory(artifact)
    stage = SecondStage.load(artifact)
    baselines = Baselines.from_dict(json.loads((artifact / "baselines.json").read_text()))
    trained_on = set((artifact / "train_prompt_ids.txt").read_text().split())
    first_figures = evaluate(first, test, baselines, trained_on, latency_requests)
    second = _StageAsPredictor(stage)
    second_figures = evaluate(second, test, baselines, trained_on, latency_requests=0)
    prompts, models = test["prompt_text"].tolist(), test["model"].tolist()
    return {
        "command": "lengthwise bench second-stage",
        "what": "first stage vs second stage (MiniLM embedding + LightGBM) on the test split "
                "(the artifact's held-out prompt group); cost of refine_batch by batch size, "
                "one thread",
        "artifact": str(artifact), "second_stage_dir": str(second_stage_dir(artifact)),
        "first_stage": {k: first_figures.get(k) for k in QUALITY_KEYS},
        "second_stage": {k: second_figures.get(k) for k in QUALITY_KEYS},
        "first_stage_predict_cpu_p99_ms": first_figures["predict_cpu_p99_ms"],
        "batch_cost": batch_cost(stage, prompts, models),
        "cpu_count": os.cpu_count(),
    }


class _StageAsPredictor:
    """The second stage behind the evaluation's predictor interface."""

    def __init__(self, stage: SecondStage):
        self.stage = stage

    def predict_batch(self, prompts, models, max_tokens=None, samplings=None):
        return self.stage.refine_batch(prompts, models, max_tokens)

    def predict(self, prompt, model, max_tokens=None, sampling=None):
        return self.stage.refine_batch([prompt], [model], [max_tokens])[0]
