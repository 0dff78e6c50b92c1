"""Benchmark of a trained predictor on CASTILLO-schema rows (figures, not pass/fail)."""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings

import numpy as np
import pandas as pd

from lengthwise.common.rank import kendall_tau
from predictor.baselines import Baselines
from predictor.breakdown import Scored, balanced, by_group, by_group_with_intervals, figures
from predictor.cleaning import degenerate_mask
from predictor.train import sample_matrix

LATENCY_REQUESTS = 500
#: ``max_tokens`` values at which the served (capped) mean is checked against the
#: capped truth, mean(min(sample, cap)): the gateway's benchmarks send 256 and 1024
CAP_CHECKS = (256, 1024)


_tau = kendall_tau


def single_sample_choice(frame: pd.DataFrame) -> np.ndarray:
    """One sampled completion per row, chosen by a hash of the row's id (reproducible)."""
    samples = frame["output_sizes"].tolist()
    keys = (frame["sample_id"] if "sample_id" in frame.columns
            else frame["prompt_id"] + "|" + frame["model"]).astype(str)
    picks = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], "big") % max(1, len(s))
             for k, s in zip(keys, samples)]
    return np.array([float(s[i]) for s, i in zip(samples, picks)])


def rank_and_error(pred: np.ndarray, frame: pd.DataFrame, single: np.ndarray) -> dict:
    truth = frame["output_mean"].to_numpy(float)
    models = frame["model"].to_numpy()
    per_model = {m: _tau(pred[models == m], truth[models == m]) for m in sorted(set(models))}
    finite = [v for v in per_model.values() if not math.isnan(v)]
    return {
        "kendall_tau_mean": _tau(pred, truth),
        "kendall_tau_per_model": float(np.mean(finite)) if finite else float("nan"),
        "kendall_tau_single": _tau(pred, single),
        "mae_tokens": float(np.mean(np.abs(pred - truth))),
        "kendall_tau_by_model": per_model,
    }


def latency_ms(predictor, frame: pd.DataFrame, requests: int = LATENCY_REQUESTS,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(wall, thread CPU) ms per request; one at a time, one thread, real prompt texts.

    CPU time is reported beside wall time because on a shared machine wall time
    also counts the wait for a core.
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(frame), size=min(requests, len(frame)), replace=False)
    texts = frame["prompt_text"].to_numpy()
    models = frame["model"].to_numpy()
    predictor.predict(texts[rows[0]], models[rows[0]])  # first call pays lazy imports
    wall, cpu = [], []
    for i in rows:
        start, start_cpu = time.perf_counter(), time.thread_time()
        predictor.predict(texts[i], models[i])
        cpu.append((time.thread_time() - start_cpu) * 1000.0)
        wall.append((time.perf_counter() - start) * 1000.0)
    return np.asarray(wall), np.asarray(cpu)


def breakdowns(mean: np.ndarray, p90: np.ndarray, frame: pd.DataFrame,
               single: np.ndarray) -> dict:
    """Per-corpus and per-model figures, the corpus-balanced pooled figures, and the
    pooled figures without the degenerate rows."""
    scored = Scored(mean, p90, frame["output_mean"].to_numpy(float), single,
                    sample_matrix(frame))
    cap_hit, high_variance = degenerate_mask(frame)
    clean = ~(cap_hit | high_variance)
    out = {"without_degenerate": figures(scored.subset(clean)).to_dict(),
           "by_model": by_group(scored, frame["model"])}
    if "dataset" in frame.columns:
        out["balanced"] = balanced(scored, frame["dataset"])
        out["by_dataset"] = (by_group_with_intervals(scored, frame["dataset"], frame["prompt_id"])
                             if "prompt_id" in frame.columns else by_group(scored, frame["dataset"]))
    return out


def capped_mean_check(predictor, frame: pd.DataFrame, caps=CAP_CHECKS,
                      uncapped_mean: np.ndarray | None = None) -> dict:
    """The served mean with ``max_tokens`` set, against each row's capped truth.

    The truth of a capped request is mean(min(sample, cap)) over the row's sampled
    completions; an unbiased capped mean matches it, per corpus too. With
    ``uncapped_mean``, the ratio of the plain clip min(mean, cap) is given beside it.
    """
    samples = sample_matrix(frame)
    prompts, models = frame["prompt_text"].tolist(), frame["model"].tolist()
    out = {}
    for cap in caps:
        predictions = predictor.predict_batch(prompts, models, [cap] * len(frame))
        mean = np.array([p.mean for p in predictions])
        truth = np.minimum(samples, cap).mean(axis=1)
        entry = {"kendall_tau_mean": kendall_tau(mean, truth),
                 "mae_tokens": float(np.mean(np.abs(mean - truth))),
                 "mean_predicted_over_true": float(mean.sum() / truth.sum())}
        if uncapped_mean is not None:
            clipped = np.minimum(uncapped_mean, cap)
            entry["clipped_mean_over_true"] = float(clipped.sum() / truth.sum())
        if "dataset" in frame.columns:
            labels = frame["dataset"].to_numpy()
            entry["by_dataset"] = {
                str(c): float(mean[labels == c].sum() / truth[labels == c].sum())
                for c in sorted(set(labels.tolist()))}
        out[str(cap)] = entry
    return out


def evaluate(predictor, frame: pd.DataFrame, baselines: Baselines,
             training_prompt_ids: set[str] | None = None,
             latency_requests: int = LATENCY_REQUESTS, caps=CAP_CHECKS) -> dict:
    """The target figures (Kendall tau, MAE, coverage, mean ratio, latency) for
    ``predictor`` (a :class:`predictor.api.CastilloLengthPredictor`).

    ``caps``: ``max_tokens`` values for :func:`capped_mean_check` (empty: skipped)."""
    started = time.perf_counter()
    predictions = predictor.predict_batch(frame["prompt_text"].tolist(), frame["model"].tolist())
    mean = np.array([p.mean for p in predictions])
    p50 = np.array([p.p50 for p in predictions])
    p90 = np.array([p.p90 for p in predictions])
    known = np.array([p.model_known for p in predictions])
    samples = sample_matrix(frame)
    single = single_sample_choice(frame)
    seen = 0
    if training_prompt_ids is not None:
        seen = int(frame["prompt_id"].isin(training_prompt_ids).sum())
        if seen:
            warnings.warn(f"{seen} of {len(frame)} evaluation rows have prompts the artifact "
                          "trained on; figures on them are not out-of-sample", stacklevel=2)
    report = {"rows": len(frame), "rows_seen_in_training": seen,
              "rows_unknown_model": int((~known).sum())}
    report.update(rank_and_error(mean, frame, single))
    report["p90_coverage"] = float(np.mean(samples <= p90[:, None]))
    report["p50_coverage"] = float(np.mean(samples <= p50[:, None]))
    report["batch_seconds"] = time.perf_counter() - started
    report.update(breakdowns(mean, p90, frame, single))
    if caps:
        report["capped_mean"] = capped_mean_check(predictor, frame, caps, mean)
    if latency_requests > 0:
        lat, cpu = latency_ms(predictor, frame, latency_requests)
        report.update({
            "predict_latency_p50_ms": float(np.percentile(lat, 50)),
            "predict_latency_p99_ms": float(np.percentile(lat, 99)),
            "predict_latency_mean_ms": float(lat.mean()),
            "predict_cpu_p50_ms": float(np.percentile(cpu, 50)),
            "predict_cpu_p99_ms": float(np.percentile(cpu, 99)),
            "latency_requests": len(lat),
            "load_average_1m": os.getloadavg()[0],
        })
    for name, pred in (("per_model_mean", baselines.predict_per_model_mean(frame)),
                       ("input_length", baselines.predict_input_length(frame))):
        figures = rank_and_error(pred, frame, single)
        figures.pop("kendall_tau_by_model")
        report[f"baseline_{name}"] = figures
    return _json_safe(report)


def _json_safe(value):
    """NaN (an undefined tau, e.g. of a constant prediction) becomes null: strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
