"""The fitted length model: text featurizer + LightGBM boosters, with and without the model name.

Two sets of boosters (mean, p50, p90) are kept:

* ``known``: the model name is a categorical feature. Used when the served model
  matches a CASTILLO model (see :mod:`predictor.model_names`).
* ``agnostic``: trained on the same rows without the model name, so it predicts
  what a prompt gets across the 13 CASTILLO models. Used for any other model
  name; a new model's lengths are unknown, and the cross-model answer is the
  least-biased guess a scheduler can rank by.

The quantile heads' targets are log1p(tokens) of single completions; p90 gets a
conformal offset (log space) fitted on a held-out calibration part of the training
prompts. The mean head learns tokens (``mean_objective`` "l2_tokens", an expected
length) or, in v4 artifacts, log1p(tokens) ("l2_log").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor.features import TextFeaturizer
from predictor.model_names import model_aliases, resolve_model
from predictor.single_row import SingleRowScorer
from predictor.train_objectives import mean_from_score

HEADS = ("mean", "p50", "p90")
PATHS = ("known", "agnostic")
#: CASTILLO generated at most this many new tokens; no prediction exceeds it.
OUTPUT_CAP = 15_000


@dataclass(frozen=True)
class RawPrediction:
    mean: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    model_known: np.ndarray


class LengthModel:
    def __init__(self, featurizer: TextFeaturizer, models: list[str], boosters: dict,
                 p90_log_offset: dict[str, float], mean_objective: str = "l2_log"):
        self.featurizer = featurizer
        self.mean_objective = mean_objective
        self.models = list(models)
        self.boosters = boosters  # {path: {head: lightgbm.Booster}}
        self.p90_log_offset = dict(p90_log_offset)
        # one request is one row: LightGBM's single-row path costs a fraction of predict()'s
        self._row_scorers = {path: {head: SingleRowScorer(b) for head, b in heads.items()}
                             for path, heads in boosters.items()}
        self._aliases = model_aliases(self.models)

    def model_code(self, name: str) -> int | None:
        return resolve_model(name, self._aliases)

    def predict_features(self, features: np.ndarray, codes: list[int | None]) -> RawPrediction:
        """Uncapped predictions in tokens for precomputed text features."""
        n = len(codes)
        out = {head: np.zeros(n) for head in HEADS}
        known = np.array([c is not None for c in codes], dtype=bool)
        for path, rows in (("known", np.flatnonzero(known)), ("agnostic", np.flatnonzero(~known))):
            if len(rows) == 0:
                continue
            matrix = features[rows]
            if path == "known":
                code_column = np.array([codes[i] for i in rows], dtype=np.float32)[:, None]
                matrix = np.hstack([code_column, matrix])
            for head in HEADS:
                if len(rows) == 1:
                    log_pred = np.array([self._row_scorers[path][head].predict(matrix[0])])
                else:
                    # one thread: per-request batches are tiny and OpenMP start-up would dominate
                    log_pred = self.boosters[path][head].predict(matrix, num_threads=1)
                if head == "p90":
                    log_pred = log_pred + self.p90_log_offset[path]
                out[head][rows] = (mean_from_score(log_pred, self.mean_objective)
                                   if head == "mean" else np.expm1(log_pred))
        p50 = np.clip(out["p50"], 1.0, OUTPUT_CAP)
        mean = np.clip(out["mean"], 1.0, OUTPUT_CAP)
        p90 = np.clip(np.maximum(out["p90"], p50), 1.0, OUTPUT_CAP)
        return RawPrediction(mean, p50, p90, known)

    def featurize(self, texts: list[str]) -> np.ndarray:
        """Feature rows for prompt texts, in order."""
        # a batch often repeats a prompt (one per model): featurize each text once
        unique: dict[str, int] = {}
        positions = [unique.setdefault(t, len(unique)) for t in texts]
        return self.featurizer.transform(list(unique))[positions]

    def predict_texts(self, texts: list[str], model_names: list[str]) -> RawPrediction:
        return self.predict_features(self.featurize(texts),
                                     [self.model_code(m) for m in model_names])

    # -- persistence -----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.featurizer.save(directory)
        for path in PATHS:
            for head in HEADS:
                self.boosters[path][head].save_model(str(directory / f"{path}_{head}.lgb.txt"))
        (directory / "model.json").write_text(json.dumps(
            {"models": self.models, "p90_log_offset": self.p90_log_offset,
             "mean_objective": self.mean_objective}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> LengthModel:
        import lightgbm

        info = json.loads((directory / "model.json").read_text())
        boosters = {
            path: {head: lightgbm.Booster(model_file=str(directory / f"{path}_{head}.lgb.txt"))
                   for head in HEADS}
            for path in PATHS
        }
        # v4 artifacts carry no mean_objective: their mean head learned log1p(tokens)
        return cls(TextFeaturizer.load(directory), info["models"], boosters, info["p90_log_offset"],
                   info.get("mean_objective", "l2_log"))
