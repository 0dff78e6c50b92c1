"""The predictor study's prompt-grouped splits: test, and validation folds for every choice.

* test: the default artifact's fixed held-out prompt group (``artifact.HOLDOUT_SALT``,
  20% of prompt ids), which the default artifact never trains on and the gateway's live
  benchmarks use as unseen prompts. Feature and parameter choices never look at it.
* validation: the remaining prompts in :data:`VALIDATION_FOLDS` folds by a second salted
  hash. A choice (feature group, objective, parameter) is judged on out-of-fold
  predictions over all of them: each fold scored by a model trained on the other folds.
  One fixed 20% split would hold 60 ShareGPT prompts; the folds together hold ~350.
* the shipped artifact then trains on every non-test prompt.

Salted hashes of ``prompt_id`` put each prompt wholly on one side of every split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from predictor.artifact import split_holdout

VALIDATION_SALT = "lengthwise-predictor-validation"
VALIDATION_FOLDS = 5


@dataclass(frozen=True)
class StudySplits:
    #: every non-test row, with its validation fold in ``fold``
    development: pd.DataFrame
    test: pd.DataFrame

    def fold(self, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(rows to fit, rows to score) of validation fold ``k``."""
        scored = self.development["fold"].to_numpy() == k
        return (self.development[~scored].reset_index(drop=True),
                self.development[scored].reset_index(drop=True))


def fold_of(prompt_id: str, folds: int = VALIDATION_FOLDS, salt: str = VALIDATION_SALT) -> int:
    digest = hashlib.sha256(f"{salt}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def study_splits(frame: pd.DataFrame, folds: int = VALIDATION_FOLDS) -> StudySplits:
    development, test = split_holdout(frame)
    development = development.assign(
        fold=np.fromiter((fold_of(p, folds) for p in development["prompt_id"]), dtype=np.int64,
                         count=len(development)))
    return StudySplits(development, test)
