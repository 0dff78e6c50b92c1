"""Where the scheduler's predicted lengths come from in a simulation.

Each source is named for what it is, so a report never passes off an oracle
as a model:

* ``predictor``: the trained length predictor (``predictor.types.LengthPredictor``)
  run in batch on each request's prompt text and model; needs prompts.
* ``trace``: the ``predicted_tokens`` recorded in the trace (the gateway's
  request log records the prediction it ranked by).
* ``oracle``: the true output length; an upper bound for any predictor.
* ``oracle-noise``: the true length times log-normal noise ``exp(N(0, sigma))``,
  seeded. A synthetic predictor of tunable quality for traces without prompt
  text (Azure, Mooncake); it is NOT the trained predictor.
* ``none``: a constant 1 token for every request; FCFS does not rank by
  length, and with several workers routing then balances sequence counts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from predictor.types import LengthPredictor

from .trace import SimRequest


class PredictionSource(StrEnum):
    PREDICTOR = "predictor"
    TRACE = "trace"
    ORACLE = "oracle"
    ORACLE_NOISE = "oracle-noise"
    NONE = "none"


class PredictionError(ValueError):
    pass


#: z of the 90th percentile of a standard normal: the p90 of ``oracle-noise``'s log-normal
_Z90 = 1.2815515655446004


@dataclass(frozen=True)
class Predictions:
    """What the gateway knows of each request's output: the point it ranks by and the p90
    it counts for the KV footprint (``None``: the point stands in for it)."""

    source: PredictionSource
    point: list[float]
    p90: list[float] | None = None


def oracle(requests: Sequence[SimRequest]) -> list[float]:
    return [float(r.output_tokens) for r in requests]


def oracle_noise(requests: Sequence[SimRequest], sigma: float, seed: int) -> list[float]:
    if sigma < 0:
        raise PredictionError("noise sigma must be non-negative")
    rng = random.Random(seed)
    return [r.output_tokens * math.exp(rng.gauss(0.0, sigma)) for r in requests]


def from_trace(requests: Sequence[SimRequest]) -> list[float]:
    missing = sum(r.predicted_tokens is None for r in requests)
    if missing:
        raise PredictionError(
            f"{missing} of {len(requests)} trace records have no predicted_tokens; "
            "choose another --prediction-source"
        )
    return [float(r.predicted_tokens) for r in requests]  # type: ignore[arg-type]


def from_predictor(
    requests: Sequence[SimRequest],
    predictor: LengthPredictor,
    estimate: str = "mean",
    default_model: str = "",
    batch_size: int = 4096,
) -> tuple[list[float], list[float]]:
    missing = sum(not r.prompt_text for r in requests)
    if missing:
        raise PredictionError(
            f"{missing} of {len(requests)} requests have no prompt text; the trained "
            "predictor needs prompts (use the CASTILLO workload or a trace with prompt_text)"
        )
    point: list[float] = []
    p90: list[float] = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        preds = predictor.predict_batch(
            [r.prompt_text or "" for r in chunk],
            [r.model or default_model for r in chunk],
        )
        point.extend(p.point(estimate) for p in preds)
        p90.extend(p.p90 for p in preds)
    return point, p90


def predictions_for(
    source: PredictionSource,
    requests: Sequence[SimRequest],
    *,
    predictor: LengthPredictor | None = None,
    estimate: str = "mean",
    noise_sigma: float = 0.5,
    seed: int = 0,
    default_model: str = "",
) -> Predictions:
    if source == PredictionSource.ORACLE:
        truth = oracle(requests)
        return Predictions(source, truth, truth)
    if source == PredictionSource.ORACLE_NOISE:
        noisy = oracle_noise(requests, noise_sigma, seed)
        # given the noisy value, the truth is log-normal around it: its p90 is this
        return Predictions(source, noisy, [x * math.exp(_Z90 * noise_sigma) for x in noisy])
    if source == PredictionSource.TRACE:
        return Predictions(source, from_trace(requests))
    if source == PredictionSource.NONE:
        return Predictions(source, [1.0] * len(requests))
    if source == PredictionSource.PREDICTOR:
        if predictor is None:
            raise PredictionError("no trained predictor was given")
        point, p90 = from_predictor(requests, predictor, estimate, default_model)
        return Predictions(source, point, p90)
    raise PredictionError(f"unknown prediction source {source!r}")
