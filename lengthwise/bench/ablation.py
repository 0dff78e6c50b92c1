"""What each feature group and mean objective buys, judged on validation folds only.

Rerun with ``lengthwise bench ablation`` (writes reports/predictor_ablation.json).

Every arm is scored on out-of-fold predictions over the development prompts (every
prompt outside the test split, :mod:`predictor.splits`): each of the validation folds
is predicted by the arm trained on the other folds. The test split is never read
here; choices made from this report cannot have looked at it. To compare feature
groups at a cost the shared machine affords, each arm trains only the model-aware
mean head (the artifact's parameters). Figures: pooled, corpus-balanced pooled
(every corpus an equal share, the figure the targets are stated on) and per corpus; latency is
text -> features -> mean head, one request at a time, for arms on the arrival path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lengthwise.common.files import write_json_report
from predictor.breakdown import Scored, balanced, by_group, figures
from predictor.cleaning import remove_degenerate
from predictor.evaluate import latency_ms, single_sample_choice
from predictor.features import FeatureConfig, TextFeaturizer, prompt_targets
from predictor.loader import load_castillo
from predictor.prompt_text import feature_text
from predictor.splits import VALIDATION_FOLDS, StudySplits, study_splits
from predictor.train import TrainParams, lightgbm_params, sample_matrix
from predictor.train_objectives import mean_from_score, mean_target

V4_FEATURES = FeatureConfig(chat_cues=())


@dataclass(frozen=True)
class Arm:
    name: str
    features: FeatureConfig
    params: TrainParams = field(default_factory=TrainParams)
    #: off the arrival path (the second stage): no single-request latency figure
    arrival_path: bool = True


def default_arms(include_minilm: bool) -> list[Arm]:
    tokens = TrainParams()
    arms = [
        Arm("v4: lexical + word n-gram SVD + ridge, log-space mean", V4_FEATURES,
            replace(tokens, mean_objective="l2_log")),
        Arm("v4 features, mean in tokens", V4_FEATURES, tokens),
        Arm("+ length_request", replace(V4_FEATURES, chat_cues=("length_request",)), tokens),
        Arm("+ question_type", replace(V4_FEATURES, chat_cues=("question_type",)), tokens),
        Arm("+ language", replace(V4_FEATURES, chat_cues=("language",)), tokens),
        Arm("+ all three chat groups",
            replace(V4_FEATURES, chat_cues=("length_request", "question_type", "language")),
            tokens),
        Arm("v5 default", FeatureConfig(), tokens),
    ]
    if include_minilm:
        arms.append(Arm("v5 default + MiniLM (second stage)", replace(FeatureConfig(), minilm=True),
                        tokens, arrival_path=False))
    return arms


class EmbeddingCache:
    """Embeds each distinct text once per study (the folds share most of their prompts)."""

    def __init__(self):
        from predictor.minilm_encoder import MiniLMEncoder

        self._encoder = MiniLMEncoder()
        self._known: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._known))
        if missing:
            for text, row in zip(missing, self._encoder.encode(missing)):
                self._known[text] = row
        return np.vstack([self._known[t] for t in texts])


class _MeanOnly:
    """Predictor over a featurizer and one mean booster (the ablation's unit of comparison)."""

    def __init__(self, featurizer, booster, models: list[str], mean_objective: str):
        self.featurizer, self.booster = featurizer, booster
        self.index = {m: i for i, m in enumerate(models)}
        self.mean_objective = mean_objective

    def predict_mean(self, texts: list[str], models: list[str]) -> np.ndarray:
        unique: dict[str, int] = {}
        positions = [unique.setdefault(t, len(unique)) for t in texts]
        features = self.featurizer.transform(list(unique))[positions]
        codes = np.array([self.index.get(m, np.nan) for m in models], dtype=np.float32)
        score = self.booster.predict(np.hstack([codes[:, None], features]), num_threads=1)
        return np.clip(mean_from_score(score, self.mean_objective), 1.0, None)

    def predict(self, prompt, model, max_tokens=None, sampling=None):
        return self.predict_mean([feature_text(prompt)], [model])[0]


def fit_mean_head(rows: pd.DataFrame, arm: Arm, embedder=None) -> _MeanOnly:
    """The arm's featurizer and model-aware mean head, fitted on cleaned ``rows``."""
    import lightgbm

    models = sorted(rows["model"].unique().tolist())
    model_codes = rows["model"].map({m: i for i, m in enumerate(models)}).to_numpy()
    prompt_codes, _ = pd.factorize(rows["prompt_id"])
    log_mean = np.log1p(rows["output_mean"].to_numpy(float))
    targets = prompt_targets(prompt_codes, model_codes, log_mean,
                             np.log1p(rows["output_std"].to_numpy(float)), prompt_codes.max() + 1)
    first = pd.Series(np.arange(len(rows))).groupby(prompt_codes).first().to_numpy()
    texts = rows["prompt_text"].to_numpy()[first].tolist()
    featurizer, prompt_features = TextFeaturizer.fit(texts, targets, arm.features,
                                                     arm.params.seed, embedder)
    matrix = np.hstack([model_codes[:, None].astype(np.float32), prompt_features[prompt_codes]])
    booster = lightgbm.train(
        lightgbm_params(arm.params, "regression"),
        lightgbm.Dataset(matrix, mean_target(rows["output_mean"].to_numpy(float),
                                             arm.params.mean_objective), categorical_feature=[0]),
        num_boost_round=arm.params.mean_rounds)
    return _MeanOnly(featurizer, booster, models, arm.params.mean_objective)


def out_of_fold(splits: StudySplits, arm: Arm, embedder=None) -> tuple[np.ndarray, _MeanOnly]:
    """Mean predictions for every development row, each by the arm fitted without its fold;
    and the last fold's fitted arm (for latency)."""
    development = splits.development
    mean = np.zeros(len(development))
    fitted = None
    for k in range(VALIDATION_FOLDS):
        scored = development["fold"].to_numpy() == k
        fit_rows, _ = remove_degenerate(development[~scored].reset_index(drop=True))
        fitted = fit_mean_head(fit_rows, arm, embedder)
        held = development[scored]
        mean[scored] = fitted.predict_mean(held["prompt_text"].tolist(), held["model"].tolist())
    return mean, fitted


def arm_figures(mean: np.ndarray, frame: pd.DataFrame) -> dict:
    scored = Scored(mean, mean, frame["output_mean"].to_numpy(float), single_sample_choice(frame),
                    sample_matrix(frame))
    pooled = figures(scored).to_dict()
    pooled.pop("p90_coverage")  # the mean head has no p90
    corpora = {k: {f: v[f] for f in ("rows", "kendall_tau_mean", "mae_tokens",
                                     "mean_predicted_over_true")}
               for k, v in by_group(scored, frame["dataset"]).items()}
    balanced_figures = balanced(scored, frame["dataset"])
    balanced_figures.pop("p90_coverage")
    return {"pooled": pooled, "balanced": balanced_figures, "by_dataset": corpora}


def ceilings(frame: pd.DataFrame) -> dict:
    """How far any predictor of these figures can go, measured on the truth itself.

    * ``truth_as_prediction``: the row's true mean predicting it (tau_mean 1) and one
      sampled completion (tau_single below 1: the sampling noise no predictor removes);
    * ``other_models_prompt_mean``: the mean of the same prompt's answers by the other
      models, times the model's length ratio; a predictor that understood the prompt as
      well as 12 models' actual answers do. A text-only predictor stays below it.
    """
    truth = frame["output_mean"].to_numpy(float)
    log_truth = np.log1p(truth)
    model_level = pd.Series(log_truth).groupby(frame["model"].to_numpy()).transform("mean")
    relative = log_truth - model_level.to_numpy()
    prompt = frame["prompt_id"].to_numpy()
    sums = pd.Series(relative).groupby(prompt).transform("sum").to_numpy()
    counts = pd.Series(relative).groupby(prompt).transform("count").to_numpy()
    others = np.where(counts > 1, (sums - relative) / np.maximum(counts - 1, 1), 0.0)
    leave_one_out = np.expm1(model_level.to_numpy() + others)
    out = {}
    for name, pred in (("truth_as_prediction", truth),
                       ("other_models_prompt_mean", leave_one_out)):
        figures_ = arm_figures(pred, frame)
        out[name] = {"balanced_tau_mean": figures_["balanced"]["kendall_tau_mean"],
                     "balanced_tau_single": figures_["balanced"]["kendall_tau_single"],
                     "balanced_mae": figures_["balanced"]["mae_tokens"],
                     "sharegpt_tau": figures_["by_dataset"].get("ShareGPT", {}).get(
                         "kendall_tau_mean")}
    return out


def run_ablation(source: Path | str | None = None, include_minilm: bool = True,
                 latency_requests: int = 300, write_to: Path | None = None,
                 arms: list[Arm] | None = None) -> dict:
    """Scores each arm on the validation folds; rewrites ``write_to`` after each one."""
    splits = study_splits(load_castillo(source))
    development = splits.development
    embedder = EmbeddingCache() if include_minilm else None
    ceiling_figures = ceilings(development)
    results = []
    report: dict = {}
    for arm in arms or default_arms(include_minilm):
        started = time.perf_counter()
        mean, fitted = out_of_fold(splits, arm, embedder if arm.features.minilm else None)
        entry = {"arm": arm.name, "feature_set": arm.features.name,
                 "mean_objective": arm.params.mean_objective,
                 "n_features": len(fitted.featurizer.feature_names),
                 "seconds_all_folds": round(time.perf_counter() - started, 1),
                 **arm_figures(mean, development)}
        if arm.arrival_path:
            wall, cpu = latency_ms(fitted, development, latency_requests)
            entry["latency_ms"] = {"wall_p50": float(np.percentile(wall, 50)),
                                   "wall_p99": float(np.percentile(wall, 99)),
                                   "cpu_p50": float(np.percentile(cpu, 50)),
                                   "cpu_p99": float(np.percentile(cpu, 99))}
        results.append(entry)
        report = _report(results, splits)
        report["ceilings"] = ceiling_figures
        if write_to is not None:
            write_json_report(write_to, report)
    return report


def _report(results: list[dict], splits: StudySplits) -> dict:
    development = splits.development
    summary = [{
        "arm": r["arm"],
        "balanced_tau_mean": r["balanced"]["kendall_tau_mean"],
        "balanced_tau_single": r["balanced"]["kendall_tau_single"],
        "balanced_mae": r["balanced"]["mae_tokens"],
        "pooled_tau_mean": r["pooled"]["kendall_tau_mean"],
        "sharegpt_tau": r["by_dataset"].get("ShareGPT", {}).get("kendall_tau_mean"),
        "worst_mean_ratio": [r["balanced"]["worst_mean_ratio_corpus"],
                             r["balanced"]["worst_mean_ratio"]],
        "cpu_p99_ms": r.get("latency_ms", {}).get("cpu_p99"),
    } for r in results]
    return {
        "command": "lengthwise bench ablation",
        "what": "each arm trains the model-aware mean head; figures are out-of-fold over the "
                f"{VALIDATION_FOLDS} validation folds of the development prompts (all prompts "
                "outside the test split; the test split is never read); latency: one request "
                "at a time, text -> features -> mean head",
        "development_rows": len(development),
        "development_prompts": int(development["prompt_id"].nunique()),
        "prompts_by_dataset": development.groupby("dataset")["prompt_id"].nunique().to_dict(),
        "params": TrainParams().to_dict(),
        "results": results,
        "summary": summary,
    }
