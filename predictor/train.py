"""Fits a :class:`~predictor.model.LengthModel` on cleaned CASTILLO rows."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from predictor.features import FeatureConfig, TextFeaturizer, prompt_targets
from predictor.loader import prompt_group_mask
from predictor.model import HEADS, LengthModel
from predictor.train_objectives import mean_from_score, mean_target

CALIBRATION_SALT = "lengthwise-calibration"


@dataclass(frozen=True)
class TrainParams:
    learning_rate: float = 0.05
    num_leaves: int = 63
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_bin: int = 63
    mean_rounds: int = 600
    #: see predictor.train_objectives.MEAN_OBJECTIVES
    mean_objective: str = "l2_tokens"
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


def lightgbm_params(params: TrainParams, objective: str, alpha: float | None = None) -> dict:
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
    codes, _ = pd.factorize(frame["prompt_id"])
    first = pd.Series(np.arange(len(frame))).groupby(codes).first().to_numpy()
    texts = frame["prompt_text"].to_numpy()[first].tolist()
    return featurizer.transform(texts)[codes]


def _fit_heads(matrix: np.ndarray, frame: pd.DataFrame, samples: np.ndarray, params: TrainParams,
               categorical: list[int], heads: tuple[str, ...] = HEADS) -> dict:
    import lightgbm

    boosters = {}
    if "mean" in heads:
        boosters["mean"] = lightgbm.train(
            lightgbm_params(params, "regression"),
            lightgbm.Dataset(matrix, mean_target(frame["output_mean"].to_numpy(float),
                                                 params.mean_objective),
                             categorical_feature=categorical),
            num_boost_round=params.mean_rounds)
    quantiles = [(h, a) for h, a in (("p50", 0.5), ("p90", 0.9)) if h in heads]
    if quantiles:
        # quantile heads learn from single completions, not row summaries: p90 is about
        # the next request's length, whose spread is the samples' spread
        rng = np.random.default_rng(params.seed)
        k = min(params.samples_per_row, samples.shape[1])
        picks = np.argsort(rng.random(samples.shape), axis=1)[:, :k]
        exploded_y = np.log1p(np.take_along_axis(samples, picks, axis=1).ravel())
        dataset = lightgbm.Dataset(np.repeat(matrix, k, axis=0), exploded_y,
                                   categorical_feature=categorical, free_raw_data=False)
        for head, alpha in quantiles:
            boosters[head] = lightgbm.train(lightgbm_params(params, "quantile", alpha), dataset,
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
    """Fits on cleaned rows. ``dataset`` is never read: features come from prompt text only.

    The shipped heads train on every row. The p90 offset comes from a calibration
    pass: p90 heads (and a mean head, for the reported metrics) trained without a
    held-out group of prompts and scored on it. All text features of training rows
    are out-of-fold (the ridge scores never saw the prompt they score).
    """
    started = time.perf_counter()
    feature_config = feature_config or FeatureConfig()
    params = params or TrainParams()
    calibration = prompt_group_mask(frame["prompt_id"], params.calibration_fraction,
                                    CALIBRATION_SALT)
    if calibration.all() or not calibration.any():
        calibration = np.zeros(len(frame), bool)
        calibration[len(frame) * 4 // 5:] = True  # tiny frames: fall back to a positional split

    models = sorted(frame["model"].unique().tolist())
    model_index = {m: i for i, m in enumerate(models)}
    model_codes = frame["model"].map(model_index).to_numpy()
    prompt_codes, _ = pd.factorize(frame["prompt_id"])
    n_prompts = prompt_codes.max() + 1
    log_mean = np.log1p(frame["output_mean"].to_numpy(float))
    log_std = np.log1p(frame["output_std"].to_numpy(float))
    targets = prompt_targets(prompt_codes, model_codes, log_mean, log_std, n_prompts)
    first = pd.Series(np.arange(len(frame))).groupby(prompt_codes).first().to_numpy()
    texts = frame["prompt_text"].to_numpy()[first].tolist()
    featurizer, prompt_features = TextFeaturizer.fit(texts, targets, feature_config, params.seed)
    text_matrix = prompt_features[prompt_codes]
    known_matrix = np.hstack([model_codes[:, None].astype(np.float32), text_matrix])
    samples = sample_matrix(frame)
    matrices = {"known": (known_matrix, [0]), "agnostic": (text_matrix, [])}

    fit, held = ~calibration, calibration
    held_frame = frame[held].reset_index(drop=True)
    offsets, metrics = {}, {}
    for path, (matrix, categorical) in matrices.items():
        heads = ("mean", "p90") if path == "known" else ("p90",)
        boosters = _fit_heads(matrix[fit], frame[fit], samples[fit], params, categorical, heads)
        log_p90 = boosters["p90"].predict(matrix[held], num_threads=params.n_jobs)
        offsets[path] = conformal_log_offset(log_p90, samples[held], params.target_coverage)
        metrics[path] = {"rows": int(held.sum()), "p90_log_offset": offsets[path],
                         "p90_coverage": float(np.mean(
                             samples[held] <= np.expm1(log_p90 + offsets[path])[:, None]))}
        if "mean" in boosters:
            mean = mean_from_score(boosters["mean"].predict(matrix[held], num_threads=params.n_jobs),
                                   params.mean_objective)
            metrics[path].update(_rank_metrics(mean, held_frame))

    final = {path: _fit_heads(matrix, frame, samples, params, categorical)
             for path, (matrix, categorical) in matrices.items()}
    model = LengthModel(featurizer, models, final, offsets, params.mean_objective)
    return TrainResult(model, time.perf_counter() - started, int(fit.sum()), int(held.sum()),
                       metrics)


def _rank_metrics(mean: np.ndarray, frame: pd.DataFrame) -> dict:
    from lengthwise.common.rank import kendall_tau

    truth = frame["output_mean"].to_numpy(float)
    return {"kendall_tau_mean": kendall_tau(mean, truth),
            "mae_tokens": float(np.mean(np.abs(mean - truth)))}
