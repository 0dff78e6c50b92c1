"""What each text feature set buys: tau and MAE on the held-out prompts vs latency per request.

Rerun with ``lengthwise bench ablation`` (writes reports/predictor_feature_ablation.json).
Every set is trained on the default artifact's training rows and scored on its
held-out prompt group, with the same LightGBM parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lengthwise.common.files import write_json_report
from predictor.artifact import split_holdout
from predictor.baselines import Baselines
from predictor.cleaning import remove_degenerate
from predictor.evaluate import evaluate
from predictor.features import FeatureConfig, TextFeaturizer, prompt_targets
from predictor.loader import load_castillo
from predictor.ngram_encoder import NgramConfig
from predictor.prompt_text import render_prompt
from predictor.train import TrainParams, lightgbm_params


def feature_sets(include_minilm: bool) -> list[FeatureConfig]:
    default = FeatureConfig()
    with_chars = replace(default, ngram=NgramConfig(char_ngrams=True))
    sets = [
        FeatureConfig(ngrams=False),
        replace(with_chars, ngram_ridge=False),
        default,
        with_chars,
    ]
    if include_minilm:
        sets.append(replace(default, minilm=True))
    return sets


class _MeanOnly:
    """Predictor over a featurizer and one mean booster (the ablation's unit of comparison)."""

    def __init__(self, featurizer, booster, models: list[str]):
        self.featurizer, self.booster = featurizer, booster
        self.index = {m: i for i, m in enumerate(models)}

    def predict_batch(self, prompts, models, max_tokens=None, samplings=None):
        unique: dict[str, int] = {}
        positions = [unique.setdefault(t, len(unique)) for t in prompts]
        features = self.featurizer.transform(list(unique))[positions]
        codes = np.array([self.index.get(m, np.nan) for m in models], dtype=np.float32)
        mean = np.expm1(self.booster.predict(np.hstack([codes[:, None], features]),
                                             num_threads=1))
        return [_Prediction(float(v)) for v in mean]

    def predict(self, prompt, model, max_tokens=None, sampling=None):
        return self.predict_batch([render_prompt(prompt)], [model])[0]


@dataclass(frozen=True)
class _Prediction:
    mean: float

    @property
    def p50(self) -> float:
        return self.mean

    p90 = p50
    model_known = True


def run_ablation(source: Path | str | None = None, include_minilm: bool = True,
                 latency_requests: int = 300, write_to: Path | None = None) -> dict:
    """Trains and scores each feature set; rewrites ``write_to`` after each one.

    To compare text features at a cost this shared machine can afford, each set
    trains only the model-aware mean head (same parameters as the artifact's);
    latency is text -> features -> that head, one request at a time.
    """
    import lightgbm

    frame = load_castillo(source)
    train_rows, held_out = split_holdout(frame)
    train_rows, cleaning = remove_degenerate(train_rows)
    baselines = Baselines.fit(train_rows)
    params = TrainParams()
    models = sorted(train_rows["model"].unique().tolist())
    model_codes = train_rows["model"].map({m: i for i, m in enumerate(models)}).to_numpy()
    prompt_codes, _ = pd.factorize(train_rows["prompt_id"])
    log_mean = np.log1p(train_rows["output_mean"].to_numpy(float))
    targets = prompt_targets(prompt_codes, model_codes, log_mean,
                             np.log1p(train_rows["output_std"].to_numpy(float)),
                             prompt_codes.max() + 1)
    first = pd.Series(np.arange(len(train_rows))).groupby(prompt_codes).first().to_numpy()
    texts = train_rows["prompt_text"].to_numpy()[first].tolist()
    results = []
    for config in feature_sets(include_minilm):
        started = time.perf_counter()
        featurizer, prompt_features = TextFeaturizer.fit(texts, targets, config, params.seed)
        matrix = np.hstack([model_codes[:, None].astype(np.float32), prompt_features[prompt_codes]])
        booster = lightgbm.train(
            lightgbm_params(params, "regression"),
            lightgbm.Dataset(matrix, log_mean, categorical_feature=[0]),
            num_boost_round=params.mean_rounds)
        seconds = time.perf_counter() - started
        predictor = _MeanOnly(featurizer, booster, models)
        figures = evaluate(predictor, held_out, baselines, None, latency_requests)
        results.append({
            "feature_set": config.name,
            "features": config.to_dict(),
            "n_features": len(featurizer.feature_names),
            "training_seconds_mean_head": round(seconds, 1),
            **{k: figures[k] for k in (
                "kendall_tau_mean", "kendall_tau_per_model", "kendall_tau_single", "mae_tokens",
                "predict_latency_p50_ms", "predict_latency_p99_ms",
                "predict_latency_mean_ms", "predict_cpu_p50_ms", "predict_cpu_p99_ms",
                "load_average_1m")},
        })
        report = _report(results, held_out, train_rows, cleaning, params, baselines)
        if write_to is not None:
            write_json_report(write_to, report)
    return report


def _report(results, held_out, train_rows, cleaning, params, baselines) -> dict:
    baseline = evaluate_baselines(held_out, baselines)
    summary = [{k: r[k] for k in ("feature_set", "kendall_tau_mean", "kendall_tau_single",
                                  "mae_tokens", "predict_latency_p50_ms",
                                  "predict_latency_p99_ms", "predict_cpu_p50_ms",
                                  "predict_cpu_p99_ms")} for r in results]
    return {
        "command": "lengthwise bench ablation",
        "what": "each feature set trains the model-aware mean head on the default artifact's "
                "training rows and is scored on its held-out prompt group (unseen prompts); "
                "latency: one request at a time, text -> features -> mean head",
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
