"""What each text feature set buys: tau and MAE on the held-out prompts vs latency per request.

Rerun with ``lengthwise predictor ablation`` (writes reports/predictor_feature_ablation.json).
Every set is trained on the default artifact's training rows and scored on its
held-out prompt group, with the same LightGBM parameters.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from predictor.api import CastilloLengthPredictor
from predictor.artifact import split_holdout
from predictor.baselines import Baselines
from predictor.cleaning import remove_degenerate
from predictor.evaluate import evaluate
from predictor.features import FeatureConfig
from predictor.loader import load_castillo
from predictor.ngram_encoder import NgramConfig
from predictor.train import TrainParams, train_length_model


def feature_sets(include_minilm: bool) -> list[FeatureConfig]:
    default = FeatureConfig()
    sets = [
        FeatureConfig(ngrams=False),
        replace(default, ngram_ridge=False),
        replace(default, ngram=NgramConfig(char_ngrams=False)),
        default,
    ]
    if include_minilm:
        sets.append(replace(default, minilm=True))
    return sets


def run_ablation(source: Path | str | None = None, include_minilm: bool = True,
                 latency_requests: int = 300, write_to: Path | None = None) -> dict:
    """Trains and scores each feature set; rewrites ``write_to`` after each one."""
    frame = load_castillo(source)
    train_rows, held_out = split_holdout(frame)
    train_rows, cleaning = remove_degenerate(train_rows)
    baselines = Baselines.fit(train_rows)
    params = TrainParams()
    results = []
    for config in feature_sets(include_minilm):
        started = time.perf_counter()
        trained = train_length_model(train_rows, config, params)
        predictor = CastilloLengthPredictor(trained.model, {"feature_set": config.name})
        figures = evaluate(predictor, held_out, baselines, None, latency_requests)
        results.append({
            "feature_set": config.name,
            "features": config.to_dict(),
            "n_features": len(trained.model.featurizer.feature_names),
            "training_seconds": round(trained.seconds, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            **{k: figures[k] for k in (
                "kendall_tau_mean", "kendall_tau_per_model", "kendall_tau_single", "mae_tokens",
                "p90_coverage", "predict_latency_p50_ms", "predict_latency_p99_ms",
                "predict_latency_mean_ms", "predict_cpu_p50_ms", "predict_cpu_p99_ms",
                "load_average_1m")},
        })
        report = _report(results, held_out, train_rows, cleaning, params, baselines)
        if write_to is not None:
            write_to.parent.mkdir(parents=True, exist_ok=True)
            write_to.write_text(json.dumps(report, indent=2))
    return report


def _report(results, held_out, train_rows, cleaning, params, baselines) -> dict:
    baseline = evaluate_baselines(held_out, baselines)
    summary = [{k: r[k] for k in ("feature_set", "kendall_tau_mean", "kendall_tau_single",
                                  "mae_tokens", "predict_latency_p50_ms",
                                  "predict_latency_p99_ms", "predict_cpu_p50_ms",
                                  "predict_cpu_p99_ms")} for r in results]
    return {
        "command": "lengthwise predictor ablation",
        "held_out_rows": len(held_out),
        "training_rows": len(train_rows),
        "cleaning": cleaning.__dict__,
        "params": params.to_dict(),
        "baselines": baseline,
        "results": results,
        "summary": summary,
    }


def evaluate_baselines(frame, baselines: Baselines) -> dict:
    from predictor.evaluate import rank_and_error, single_sample_choice

    single = single_sample_choice(frame)
    out = {}
    for name, pred in (("per_model_mean", baselines.predict_per_model_mean(frame)),
                       ("input_length", baselines.predict_input_length(frame))):
        figures = rank_and_error(pred, frame, single)
        figures.pop("kendall_tau_by_model")
        out[name] = figures
    return out
