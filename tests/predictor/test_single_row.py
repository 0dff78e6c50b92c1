"""LightGBM's single-row fast path gives exactly what Booster.predict gives."""

import numpy as np
import pytest

from predictor.api import CastilloLengthPredictor
from predictor.model import HEADS
from predictor.single_row import SingleRowScorer


def test_single_row_scores_equal_booster_predict_on_both_paths(small_artifact, small_rows):
    model = CastilloLengthPredictor.from_directory(small_artifact)._model
    features = model.featurize(small_rows["prompt_text"].head(40).tolist())
    codes = np.array([model.model_code(m) for m in small_rows["model"].head(40)], np.float32)
    matrices = {"agnostic": features, "known": np.hstack([codes[:, None], features])}
    for path, matrix in matrices.items():
        for head in HEADS:
            booster = model.boosters[path][head]
            scorer = SingleRowScorer(booster)
            expected = booster.predict(matrix, num_threads=1)
            got = np.array([scorer.predict(row) for row in matrix])
            np.testing.assert_array_equal(got, expected)
            assert len(set(got.round(6))) > 1  # the rows really differ


def test_a_row_of_the_wrong_width_is_refused(small_artifact):
    model = CastilloLengthPredictor.from_directory(small_artifact)._model
    scorer = SingleRowScorer(model.boosters["agnostic"]["mean"])
    with pytest.raises(ValueError, match="features"):
        scorer.predict(np.zeros(scorer.num_features + 1))
