"""The served mean is an expected length, capped by max_tokens as a capped request is."""

import json
import shutil

import numpy as np
import pytest

from predictor.api import CastilloLengthPredictor
from predictor.artifact import train_artifact
from predictor.capped_mean import Z90, capped_expectation

KNOWN = "Qwen--Qwen2.5-14B-Instruct"


def test_capped_expectation_matches_sampled_log_normal_answers():
    rng = np.random.default_rng(0)
    mean, sigma = 400.0, 0.8
    mu = np.log(mean) - sigma**2 / 2
    draws = rng.lognormal(mu, sigma, size=400_000)
    p50, p90 = np.exp(mu), np.exp(mu + Z90 * sigma)
    for cap in (50, 256, 1024, 4096):
        expected = np.minimum(draws, cap).mean()
        assert capped_expectation(mean, p50, p90, cap) == pytest.approx(expected, rel=0.01)
    # no spread: the cap simply clips
    assert capped_expectation(300.0, 200.0, 200.0, 100.0) == 100.0


def test_a_capped_mean_is_below_both_the_cap_and_the_uncapped_mean(small_predictor, small_rows):
    prompts, models = small_rows["prompt_text"].head(40).tolist(), small_rows["model"].head(40).tolist()
    free = small_predictor.predict_batch(prompts, models)
    for cap in (16, 256, 2048):
        capped = small_predictor.predict_batch(prompts, models, [cap] * 40)
        for f, c in zip(free, capped):
            assert 1.0 <= c.mean <= min(f.mean, cap) + 1e-9
            assert c.p90 == min(f.p90, cap)
        if cap == 256:
            # a cap near the answers' length takes off more than min(mean, cap) does
            assert any(c.mean < min(f.mean, cap) - 1 for f, c in zip(free, capped))


def test_the_mean_is_not_a_geometric_mean(small_predictor, small_rows):
    """On rows like those it was fit on, the mean head's average matches the true average;
    a log-space head (v4's), trained the same way, comes out at 0.84 of it here."""
    rows = small_rows.head(600)
    predicted = np.array([p.mean for p in small_predictor.predict_batch(
        rows["prompt_text"].tolist(), rows["model"].tolist())])
    truth = rows["output_mean"].to_numpy(float)
    assert predicted.sum() / truth.sum() == pytest.approx(1.0, abs=0.1)


def test_artifacts_written_before_v5_keys_load_as_they_were_trained(small_rows, small_config,
                                                                    tmp_path):
    from dataclasses import replace

    features, params = small_config
    old = train_artifact(small_rows, tmp_path / "old", source="tests",
                         feature_config=replace(features, chat_cues=()),
                         params=replace(params, mean_objective="l2_log"))
    prompts, models = small_rows["prompt_text"].head(20).tolist(), small_rows["model"].head(20).tolist()
    before = CastilloLengthPredictor.from_directory(old).predict_batch(prompts, models)
    # strip what v5 added, as a v4 artifact's files read
    for name, key in (("features.json", "chat_cues"), ("model.json", "mean_objective")):
        data = json.loads((old / name).read_text())
        data.pop(key)
        (old / name).write_text(json.dumps(data))
    after = CastilloLengthPredictor.from_directory(old).predict_batch(prompts, models)
    assert after == before
    shutil.rmtree(old)
