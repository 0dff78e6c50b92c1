"""Real CASTILLO rows (from the shared copy) and a small, really trained artifact."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from predictor.artifact import train_artifact
from predictor.features import FeatureConfig
from predictor.loader import default_castillo_dir, grouped_split, read_path
from predictor.ngram_encoder import NgramConfig
from predictor.train import TrainParams

# Small enough that fitting takes seconds; the shapes and code paths are the real ones.
SMALL_FEATURES = FeatureConfig(ngram=NgramConfig(word_hash_bits=14, char_hash_bits=14,
                                                 svd_dims=8))
SMALL_PARAMS = TrainParams(num_leaves=7, min_data_in_leaf=10, mean_rounds=30,
                           quantile_rounds=20)


@pytest.fixture(scope="session")
def small_config():
    """(feature config, training params) of the small test artifacts."""
    return SMALL_FEATURES, SMALL_PARAMS


@pytest.fixture(scope="session")
def castillo_validate() -> pd.DataFrame:
    path = default_castillo_dir() / "validate.parquet"
    if not path.exists():
        pytest.skip(f"shared CASTILLO copy not found at {path}")
    return read_path(path)


@pytest.fixture(scope="session")
def small_rows(castillo_validate) -> pd.DataFrame:
    """About 4% of validate's prompts (all seven corpora, all models), ~1,100 rows."""
    _, sample = grouped_split(castillo_validate, test_fraction=0.04, salt="tests-small")
    return sample


@pytest.fixture(scope="session")
def small_artifact(small_rows, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("artifact") / "v-test"
    return train_artifact(small_rows, directory, holdout=True, source="tests",
                          feature_config=SMALL_FEATURES, params=SMALL_PARAMS)


@pytest.fixture(scope="session")
def small_predictor(small_artifact):
    from predictor.api import CastilloLengthPredictor

    return CastilloLengthPredictor.from_directory(small_artifact)
