"""``lengthwise profile evaluate``: what a served model's own profile buys the predictor,
on a synthetic profile whose lengths follow the prompt's wording (tests/synthetic_profile.py)."""

from __future__ import annotations

from synthetic_profile import write_synthetic_profile

from predictor.profiling.served_eval import evaluate_served_model

CAP = 128


def test_the_profile_improves_ranking_and_short_cap_rows_are_kept(small_rows, small_config,
                                                                   tmp_path):
    profile = write_synthetic_profile(tmp_path / "profile", cap=CAP)
    castillo = tmp_path / "castillo.parquet"
    small_rows.to_parquet(castillo)
    _features, params = small_config
    result = evaluate_served_model(profile, castillo, test_fraction=0.3, params=params)
    data = result["data"]
    assert result["max_tokens"] == CAP and data["profile_prompts"] == 75
    # every story hits the cap, yet none is dropped: the cap bounds it, it is the real target
    assert data["profile_rows_cap_hit"] == 25 and data["profile_rows_high_variance"] == 0
    assert data["profile_train_prompts_after_cleaning"] == data["profile_train_prompts"]
    settings = result["settings"]
    assert set(settings) == {"castillo_only", "profile_only", "both"}
    assert settings["castillo_only"]["held_out_all"]["model_known_path"] is False
    assert settings["both"]["held_out_all"]["model_known_path"] is True
    agnostic = settings["castillo_only"]["held_out_all"]
    own = settings["profile_only"]["held_out_all"]
    assert own["kendall_tau_mean"] > 0.6
    assert own["kendall_tau_mean"] > (agnostic["kendall_tau_mean"] or 0.0) + 0.2
    assert own["mae_tokens"] < agnostic["mae_tokens"]
    assert settings["both"]["held_out_all"]["kendall_tau_mean"] > (agnostic["kendall_tau_mean"] or 0.0)
    # synthetic prompts: none of them is in CASTILLO, so the unseen subset is all of them
    assert settings["both"]["held_out_unseen_by_castillo"]["rows"] == settings["both"]["held_out_all"]["rows"]


def test_a_served_artifact_knows_the_served_model_and_survives_ensure_trained(
        small_rows, small_config, tmp_path):
    import json

    from predictor.api import CastilloLengthPredictor
    from predictor.artifact import ensure_trained, read_meta
    from predictor.profiling.report import load_profile
    from predictor.profiling.served_eval import train_served_artifact

    profile = write_synthetic_profile(tmp_path / "profile", cap=CAP)
    castillo = tmp_path / "castillo.parquet"
    small_rows.to_parquet(castillo)
    # a benchmark's prompts (here five of the profile's, in the profiler's JSON format,
    # with other whitespace) are left out of training
    texts = list(load_profile(profile)["prompt_text"])
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([{"instruction": "  " + t.replace(" ", "  ") + "\n"}
                                 for t in texts[:5]]))
    features, params = small_config
    out = train_served_artifact(profile, tmp_path / "served", castillo, [bench],
                                feature_config=features, params=params)
    info = read_meta(out)["data"]["served_model_profile"]
    assert info["rows"] == len(texts) - 5 and info["rows_excluded_as_benchmark_prompts"] == 5
    served_model = info["served_model"]
    predictor = CastilloLengthPredictor.from_directory(out)
    assert predictor.is_known_model(served_model)
    preds = predictor.predict_batch(texts[5:], [served_model] * (len(texts) - 5), [CAP] * (len(texts) - 5))
    assert all(p.model_known and p.mean <= CAP for p in preds)
    # the gateway loads predictors through ensure_trained: the served artifact is kept as it is
    assert ensure_trained(castillo, out) == out
    assert read_meta(out)["data"]["served_model_profile"] == info
