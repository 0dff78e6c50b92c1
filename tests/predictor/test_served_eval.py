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
