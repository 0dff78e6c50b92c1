"""Fits a :class:`~predictor.model.LengthModel` on cleaned CASTILLO rows."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from predictor.features import FeatureConfig, TextFeaturizer, prompt_targets
from predictor.loader import prompt_group_mask
from predictor.model import HEADS, LengthModel

CALIBRATION_SALT = "lengthwise-calibration"


@dataclass(frozen=True)
class TrainParams:
    learning_rate: float = 0.06
    num_leaves: int = 31
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_bin: int = 63
    mean_rounds: int = 400
    quantile_rounds: int = 250
    #: sampled completions per row used for the quantile heads (of 10)
    samples_per_row: int = 2
    calibration_fraction: float = 0.15
    target_coverage: float = 0.90
    #: one thread by default: on a machine shared with vLLM workers, OpenMP with 2
    #: threads ran 6x slower than 1 thread (measured); 2 is the ceiling
    n_jobs: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _lgb_params(params: TrainParams, objective: str, alpha: float | None = None) -> dict:
    out = {
        "objective": objective, "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves, "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": params.feature_fraction, "bagging_fraction": params.bagging_fraction,
        "bagging_freq": 1, "lambda_l2": params.lambda_l2, "max_bin": params.max_bin, "num_threads": params.n_jobs,
        "seed": params.seed, "deterministic": True, "force_row_wise": True, "verbose": -1,
    }
    if alpha is not None:
        out["alpha"] = alpha
    return out


def sample_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(rows x 10) sampled completion lengths; shorter lists are padded by repetition."""
    sizes = frame["output_sizes"].tolist()
    width = max((len(s) for s in sizes), default=10)
    return np.vstack([np.resize(np.asarray(s, float), width) for s in sizes])


def text_features_for_rows(featurizer: TextFeaturizer, frame: pd.DataFrame) -> np.ndarray:
    """Features per row, computed once per unique prompt."""
    codes, uniques = pd.factorize(frame["prompt_id"])
    first = pd.Series(np.arange(len(frame))).groupby(codes).first().to_numpy()
    texts = frame["prompt_text"].to_numpy()[first].tolist()
    return featurizer.transform(texts)[codes]


def _fit_heads(matrix: np.ndarray, frame: pd.DataFrame, samples: np.ndarray, params: TrainParams,
               categorical: list[int]) -> dict:
    import lightgbm

    rng = np.random.default_rng(params.seed)
    log_mean = np.log1p(frame["output_mean"].to_numpy(float))
    boosters = {"mean": lightgbm.train(
        _lgb_params(params, "regression"),
        lightgbm.Dataset(matrix, log_mean, categorical_feature=categorical, free_raw_data=False),
        num_boost_round=params.mean_rounds)}
    # quantile heads learn from single completions, not row summaries: p90 is about
    # the next request's length, whose spread is the samples' spread
    k = min(params.samples_per_row, samples.shape[1])
    picks = np.argsort(rng.random(samples.shape), axis=1)[:, :k]
    exploded_y = np.log1p(np.take_along_axis(samples, picks, axis=1).ravel())
    exploded_x = np.repeat(matrix, k, axis=0)
    dataset = lightgbm.Dataset(exploded_x, exploded_y, categorical_feature=categorical,
                               free_raw_data=False)
    for head, alpha in (("p50", 0.5), ("p90", 0.9)):
        boosters[head] = lightgbm.train(_lgb_params(params, "quantile", alpha), dataset,
                                        num_boost_round=params.quantile_rounds)
    return boosters


def conformal_log_offset(log_pred: np.ndarray, samples: np.ndarray, coverage: float) -> float:
    """Smallest log shift putting ``coverage`` of the calibration samples at or under p90."""
    scores = (np.log1p(samples) - log_pred[:, None]).ravel()
    n = len(scores)
    level = min(1.0, np.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


@dataclass
class TrainResult:
    model: LengthModel
    seconds: float
    rows_fit: int
    rows_calibration: int
    calibration_metrics: dict


def train_length_model(frame: pd.DataFrame, feature_config: FeatureConfig | None = None,
                       params: TrainParams | None = None) -> TrainResult:
    """Fits on cleaned rows. ``dataset`` is never read: features come from prompt text only."""
    started = time.perf_counter()
    feature_config = feature_config or FeatureConfig()
    params = params or TrainParams()
    calibration = prompt_group_mask(frame["prompt_id"], params.calibration_fraction,
                                    CALIBRATION_SALT)
    if calibration.all() or not calibration.any():
        calibration = np.zeros(len(frame), bool)
        calibration[len(frame) * 4 // 5:] = True  # tiny frames: fall back to a positional split
    fit, calib = frame[~calibration].reset_index(drop=True), frame[calibration].reset_index(drop=True)

    models = sorted(fit["model"].unique().tolist())
    model_index = {m: i for i, m in enumerate(models)}
    model_codes = fit["model"].map(model_index).to_numpy()
    prompt_codes, _ = pd.factorize(fit["prompt_id"])
    n_prompts = prompt_codes.max() + 1
    log_mean = np.log1p(fit["output_mean"].to_numpy(float))
    log_std = np.log1p(fit["output_std"].to_numpy(float))
    targets = prompt_targets(prompt_codes, model_codes, log_mean, log_std, n_prompts)
    first = pd.Series(np.arange(len(fit))).groupby(prompt_codes).first().to_numpy()
    texts = fit["prompt_text"].to_numpy()[first].tolist()
    featurizer, prompt_features = TextFeaturizer.fit(texts, targets, feature_config, params.seed)
    text_matrix = prompt_features[prompt_codes]
    samples = sample_matrix(fit)

    known_matrix = np.hstack([model_codes[:, None].astype(np.float32), text_matrix])
    boosters = {
        "known": _fit_heads(known_matrix, fit, samples, params, categorical=[0]),
        "agnostic": _fit_heads(text_matrix, fit, samples, params, categorical=[]),
    }
    model = LengthModel(featurizer, models, boosters, {"known": 0.0, "agnostic": 0.0})

    calib_features = text_features_for_rows(featurizer, calib)
    calib_codes = [model.model_code(m) for m in calib["model"]]
    calib_samples = sample_matrix(calib)
    offsets, metrics = {}, {}
    for path in ("known", "agnostic"):
        codes = calib_codes if path == "known" else [None] * len(calib)
        raw = model.predict_features(calib_features, codes)
        offsets[path] = conformal_log_offset(np.log1p(raw.p90), calib_samples,
                                             params.target_coverage)
    model.p90_log_offset = offsets
    for path in ("known", "agnostic"):
        codes = calib_codes if path == "known" else [None] * len(calib)
        raw = model.predict_features(calib_features, codes)
        metrics[path] = _quick_metrics(raw, calib, calib_samples)
    return TrainResult(model, time.perf_counter() - started, len(fit), len(calib), metrics)


def _quick_metrics(raw, frame: pd.DataFrame, samples: np.ndarray) -> dict:
    from scipy.stats import kendalltau

    truth = frame["output_mean"].to_numpy(float)
    return {
        "rows": int(len(frame)),
        "kendall_tau_mean": float(kendalltau(raw.mean, truth).statistic),
        "mae_tokens": float(np.mean(np.abs(raw.mean - truth))),
        "p90_coverage": float(np.mean(samples <= raw.p90[:, None])),
        "p50_coverage": float(np.mean(samples <= raw.p50[:, None])),
    }

