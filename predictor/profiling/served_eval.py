"""What the served model's own profile buys the predictor, on its held-out prompts.

Three settings, scored on the same held-out prompts of the profile (grouped by
``prompt_id``; every prediction capped at the profile's ``max_tokens``, as the
gateway caps by the request's):

* ``castillo_only``: the default artifact (CASTILLO's training split); the served
  model's name is unknown to it, so the model-agnostic path answers;
* ``profile_only``: trained on the profile's training prompts alone;
* ``both``: CASTILLO's training split plus the profile's training prompts, the
  served model as one more model name (the known path answers).

CASTILLO's training rows are cleaned with the paper's degeneration rule. Profile
rows are flagged with the same rule scaled to the run's cap (see
:mod:`predictor.profiling.degeneration`), but only the ``high_variance`` rows are
dropped for training: a row whose completions hit a short cap is not an outlier
(the cap bounds it) and its capped mean is exactly the length the gateway meets at
that cap. Dropping it, as the paper does at a 15,000-token cap, would remove most of
a short-cap profile and all of its long-answer prompts.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from predictor.api import CastilloLengthPredictor
from predictor.artifact import ensure_trained, split_holdout
from predictor.cleaning import remove_degenerate
from predictor.evaluate import rank_and_error, single_sample_choice
from predictor.features import FeatureConfig
from predictor.loader import grouped_split, load_castillo
from predictor.profiling.degeneration import flag_degenerate
from predictor.profiling.report import load_profile, profile_cap
from predictor.train import TrainParams, train_length_model

SPLIT_SALT = "lengthwise-served-model-split"
#: Fewer clean training prompts than this and the profile settings are not trained.
MIN_TRAIN_PROMPTS = 20


def profile_params(params: TrainParams, rows: int) -> TrainParams:
    """A profile is small next to CASTILLO: leaves scale down with it."""
    return replace(params, min_data_in_leaf=max(5, min(params.min_data_in_leaf, rows // 10)))


def clean_profile(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Profile rows fit for training: the scaled rule's ``high_variance`` rows removed."""
    _cap_hit, high_variance = flag_degenerate(frame, cap)
    return frame[~high_variance].reset_index(drop=True)


def unflagged_profile(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Rows the scaled rule does not flag at all (neither cap hit nor high variance)."""
    cap_hit, high_variance = flag_degenerate(frame, cap)
    return frame[~(cap_hit | high_variance)].reset_index(drop=True)


def _scores(predictor: CastilloLengthPredictor, frame: pd.DataFrame, model: str, cap: int) -> dict:
    if frame.empty:
        return {"rows": 0}
    predictions = predictor.predict_batch(frame["prompt_text"].tolist(), [model] * len(frame),
                                          [cap] * len(frame))
    mean = np.array([p.mean for p in predictions])
    figures = rank_and_error(mean, frame, single_sample_choice(frame))
    figures.pop("kendall_tau_by_model")
    figures.pop("kendall_tau_per_model")
    figures["rows"] = len(frame)
    figures["model_known_path"] = bool(predictions[0].model_known)
    p90 = np.array([p.p90 for p in predictions])
    samples = np.vstack([np.resize(np.asarray(s, float), 10) for s in frame["output_sizes"]])
    figures["p90_coverage"] = float(np.mean(samples <= p90[:, None]))
    # a constant prediction has no rank: JSON null, not NaN
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()}


def evaluate_served_model(profile_dir: Path | str, castillo_source: Path | str | None = None,
                          test_fraction: float = 0.3, params: TrainParams | None = None) -> dict:
    profile = load_profile(profile_dir)
    cap = profile_cap(profile)
    model = str(profile["model"].iloc[0])
    train_part, test_part = grouped_split(profile, test_fraction, SPLIT_SALT)
    train_clean = clean_profile(train_part, cap)
    test_clean = clean_profile(test_part, cap)
    test_unflagged = unflagged_profile(test_part, cap)
    cap_hit, high_variance = flag_degenerate(profile, cap)
    params = params or TrainParams()

    castillo = load_castillo(castillo_source)
    castillo_train, _ = split_holdout(castillo)
    castillo_clean, cleaning = remove_degenerate(castillo_train)
    seen_by_castillo = test_part["prompt_text"].isin(set(castillo_clean["prompt_text"])).to_numpy()
    overlap = int(seen_by_castillo.sum())
    # CASTILLO trained on these texts (with other models' lengths): scored apart as well
    test_unseen = test_part[~seen_by_castillo].reset_index(drop=True)

    predictors: dict[str, tuple[CastilloLengthPredictor, float]] = {}
    started = time.perf_counter()
    if castillo_source is None:
        # the default artifact was trained on exactly ``castillo_clean``'s rows
        castillo_model = CastilloLengthPredictor.from_directory(ensure_trained())
    else:  # never retrain the shared default artifact on another source
        castillo_model = CastilloLengthPredictor(train_length_model(castillo_clean, params=params).model)
    predictors["castillo_only"] = (castillo_model, time.perf_counter() - started)
    settings: dict[str, dict] = {}
    if len(train_clean) >= MIN_TRAIN_PROMPTS:
        started = time.perf_counter()
        fitted = train_length_model(train_clean, params=profile_params(params, len(train_clean)))
        predictors["profile_only"] = (CastilloLengthPredictor(fitted.model),
                                      time.perf_counter() - started)
        started = time.perf_counter()
        combined = pd.concat([castillo_clean, train_clean], ignore_index=True)
        fitted = train_length_model(combined, params=params)
        predictors["both"] = (CastilloLengthPredictor(fitted.model), time.perf_counter() - started)
    else:
        reason = f"{len(train_clean)} clean training prompts in the profile, fewer than {MIN_TRAIN_PROMPTS}"
        settings = {"profile_only": {"skipped": reason}, "both": {"skipped": reason}}

    for name, (predictor, seconds) in predictors.items():
        settings[name] = {
            "held_out_clean": _scores(predictor, test_clean, model, cap),
            "held_out_all": _scores(predictor, test_part, model, cap),
            "held_out_unflagged": _scores(predictor, test_unflagged, model, cap),
            "held_out_unseen_by_castillo": _scores(predictor, test_unseen, model, cap),
            "train_or_load_seconds": round(seconds, 1),
        }
    return {
        "served_model": model,
        "max_tokens": cap,
        "settings": settings,
        "data": {
            "profile_prompts": len(profile),
            "profile_train_prompts": len(train_part),
            "profile_train_prompts_after_cleaning": len(train_clean),
            "held_out_prompts": len(test_part),
            "held_out_prompts_after_cleaning": len(test_clean),
            "held_out_prompts_unflagged": len(test_unflagged),
            "profile_rows_cap_hit": int(cap_hit.sum()),
            "profile_rows_high_variance": int(high_variance.sum()),
            "held_out_prompts_whose_text_is_in_castillo_training": overlap,
            "castillo_training_rows_after_cleaning": len(castillo_clean),
            "castillo_rows_removed_by_cleaning": int(cleaning.rows_removed),
            "split": {"salt": SPLIT_SALT, "test_fraction": test_fraction, "grouped_by": "prompt_id"},
        },
        "notes": ("truth = each held-out prompt's mean of its sampled lengths (capped by the run); "
                  "kendall_tau_single ranks against one sampled completion, what a scheduler meets; "
                  "held_out_clean drops the scaled rule's high-variance rows (as training does), "
                  "held_out_unflagged also drops cap-hit rows, held_out_all keeps every row, "
                  "held_out_unseen_by_castillo keeps the prompts whose text is not in CASTILLO's "
                  "training split"),
    }


def _normalized(text: str) -> str:
    return " ".join(str(text).split())


def train_served_artifact(profile_dir: Path | str, output: Path | str,
                          castillo_source: Path | str | None = None,
                          exclude_prompt_files: list[Path] | None = None, *,
                          feature_config: FeatureConfig | None = None,
                          params: TrainParams | None = None) -> Path:
    """The ``both`` setting as a servable artifact: CASTILLO's training split plus every
    clean profile row (minus prompts found in ``exclude_prompt_files``, compared with
    whitespace normalized), the served model as one more known model name."""
    from predictor.artifact import train_artifact
    from predictor.profiling.prompt_files import read_prompt_files

    profile = load_profile(profile_dir)
    cap = profile_cap(profile)
    rows = clean_profile(profile, cap)
    excluded = 0
    if exclude_prompt_files:
        banned = {_normalized(p.text) for p in read_prompt_files(exclude_prompt_files)}
        keep = ~rows["prompt_text"].map(_normalized).isin(banned)
        excluded = int((~keep).sum())
        rows = rows[keep].reset_index(drop=True)
    info = {"profile": str(profile_dir), "served_model": str(profile["model"].iloc[0]),
            "max_tokens": cap, "rows_excluded_as_benchmark_prompts": excluded,
            "excluded_prompt_files": [str(p) for p in exclude_prompt_files or []]}
    return train_artifact(load_castillo(castillo_source), Path(output),
                          source=str(castillo_source or "default CASTILLO source"),
                          feature_config=feature_config, params=params,
                          served_profile=rows, served_profile_info=info)
