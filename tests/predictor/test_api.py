import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from predictor.api import CastilloLengthPredictor
from predictor.errors import PredictorInputError
from predictor.types import LengthPrediction

KNOWN = "Qwen--Qwen2.5-14B-Instruct"


def test_prediction_shape_and_order(small_predictor):
    p = small_predictor.predict("Write a Python function that reverses a linked list.", KNOWN)
    assert isinstance(p, LengthPrediction)
    assert p.model_known
    assert 1.0 <= p.p50 <= p.p90 <= 15_000
    assert 1.0 <= p.mean <= 15_000


def test_served_name_forms_match_castillo_names(small_predictor):
    for name in ("Qwen/Qwen2.5-14B-Instruct", "qwen/qwen2.5-14b-instruct", "Qwen2.5-14B-Instruct"):
        assert small_predictor.is_known_model(name)
        assert small_predictor.predict("hello", name) == small_predictor.predict("hello", KNOWN)


def test_unseen_model_uses_the_model_agnostic_path(small_predictor):
    prompt = "Explain how photosynthesis works in detail."
    a = small_predictor.predict(prompt, "HuggingFaceTB/SmolLM2-135M-Instruct")
    b = small_predictor.predict(prompt, "some-other-model")
    assert not a.model_known and not b.model_known
    assert a == b  # the name of an unseen model carries no information
    assert 1.0 <= a.mean <= 15_000 and a.p50 <= a.p90


def test_max_tokens_caps_every_estimate(small_predictor):
    prompt = "Write a long essay about the history of Rome."
    free = small_predictor.predict(prompt, KNOWN)
    one = small_predictor.predict(prompt, KNOWN, max_tokens=1)
    assert (one.mean, one.p50, one.p90) == (1.0, 1.0, 1.0)
    assert small_predictor.predict(prompt, KNOWN, max_tokens=100_000) == free
    capped = small_predictor.predict(prompt, KNOWN, max_tokens=int(free.p50))
    assert capped.p90 == int(free.p50) and capped.mean <= int(free.p50)


@pytest.mark.parametrize("prompt", [
    "", "   ", "x" * 1_000_000, b"\xff\xfe not utf-8 \xe9", "lone \ud800 surrogate",
    [{"role": "user", "content": ""}], [{"role": "user", "content": None}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "t"}]}],
])
def test_awkward_prompts_get_a_prediction(small_predictor, prompt):
    p = small_predictor.predict(prompt, KNOWN, max_tokens=512)
    assert 1.0 <= p.p50 <= p.p90 <= 512
    assert np.isfinite([p.mean, p.p50, p.p90]).all()


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": 0}, {"max_tokens": -5}, {"max_tokens": "100"}, {"max_tokens": 1.5},
    {"max_tokens": True}, {"model": None}, {"model": 7}, {"prompt": 42}, {"prompt": [1, 2]},
    {"prompt": [{"role": "user", "content": 3}]}, {"sampling": {"temperature": "hot"}},
    {"sampling": {"top_p": 0}}, {"sampling": {"temperature": float("nan")}}, {"sampling": [1]},
])
def test_bad_requests_raise_a_typed_error(small_predictor, kwargs):
    call = {"prompt": "hi", "model": KNOWN, **kwargs}
    with pytest.raises(PredictorInputError):
        small_predictor.predict(call["prompt"], call["model"], call.get("max_tokens"),
                                call.get("sampling"))


def test_sampling_settings_are_accepted(small_predictor):
    p = small_predictor.predict("hi", KNOWN, 64, {"temperature": 0.0, "top_p": 0.9, "top_k": -1})
    assert p.p90 <= 64


def test_batch_matches_single_requests(small_predictor, small_rows):
    rows = small_rows.head(30)
    prompts, models = rows["prompt_text"].tolist(), rows["model"].tolist()
    models[3] = "unseen/model"
    caps = [None, 1, 50, 100_000] * 7 + [None, None]
    batch = small_predictor.predict_batch(prompts, models, caps)
    assert batch == [small_predictor.predict(p, m, c) for p, m, c in zip(prompts, models, caps)]
    assert not batch[3].model_known
    with pytest.raises(PredictorInputError):
        small_predictor.predict_batch(prompts, models[:-1])
    assert small_predictor.predict_batch([], []) == []


def test_concurrent_callers_get_the_same_answers(small_predictor, small_rows):
    rows = small_rows.head(64)
    pairs = list(zip(rows["prompt_text"], rows["model"]))
    expected = [small_predictor.predict(p, m) for p, m in pairs]
    barrier = threading.Barrier(8)

    def work(chunk):
        barrier.wait()
        return [small_predictor.predict(p, m) for p, m in chunk]

    with ThreadPoolExecutor(8) as pool:
        chunks = [pairs[i::8] for i in range(8)]
        results = list(pool.map(work, chunks))
    for i, result in enumerate(results):
        assert result == expected[i::8]


def test_artifact_round_trip_and_meta(small_artifact, small_predictor, small_rows):
    meta = json.loads((small_artifact / "meta.json").read_text())
    for key in ("artifact_version", "data", "feature_set", "features", "feature_names",
                "params", "metrics", "libraries", "models", "training_seconds"):
        assert key in meta
    assert len(meta["data"]["fingerprint"]) == 64
    assert meta["data"]["cleaning"]["rows_in"] >= meta["data"]["cleaning"]["rows_out"]
    assert meta["data"]["holdout"]["enabled"] and meta["data"]["holdout"]["rows_held_out"] > 0
    assert {"lightgbm", "scikit-learn", "numpy"} <= set(meta["libraries"])
    assert meta["params"]["n_jobs"] <= 2
    assert "dataset" not in " ".join(meta["feature_names"])
    assert 0.5 < meta["metrics"]["calibration_split"]["known"]["p90_coverage"] <= 1.0
    reloaded = CastilloLengthPredictor.from_directory(small_artifact)
    prompts, models = small_rows["prompt_text"].head(20).tolist(), small_rows["model"].head(20).tolist()
    assert reloaded.predict_batch(prompts, models) == small_predictor.predict_batch(prompts, models)
    trained_on = set((small_artifact / "train_prompt_ids.txt").read_text().split())
    assert trained_on and trained_on < set(small_rows["prompt_id"])
