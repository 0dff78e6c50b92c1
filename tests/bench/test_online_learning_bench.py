"""``lengthwise profile bench-online --mode replay`` on a synthetic served-model profile:
the gateway's learner starts from the model-agnostic predictor and must catch up with
one trained offline on the profile, in rank and in simulated sjf latency."""

from __future__ import annotations

from synthetic_profile import write_synthetic_profile

from lengthwise.bench.online_learning import DEFAULT_COST_MODEL, replay


def test_replay_learns_the_served_model_and_sjf_latency_follows(tmp_path):
    profile = write_synthetic_profile(tmp_path / "profile", cap=128)
    report = replay(profile, requests=240, window=60, refit_every=30, seeds=(1,))
    assert report["requests"] == 240 and report["cost_model"] == str(DEFAULT_COST_MODEL)
    assert report["learner"][0]["refits_accepted"] >= 1
    first, last = report["checkpoints"]["200"], report["checkpoints"]["240"]
    # Compared on the same window: the model-agnostic predictor already ranks this
    # profile fairly well (tau ~0.65), so the learner must beat it in rank and, above all,
    # learn the served model's scale, which the model-agnostic one cannot know.
    learned, cold = last["online"], last["cold_model_agnostic"]
    assert learned["kendall_tau"] > 0.5 and learned["kendall_tau"] > cold["kendall_tau"] + 0.1
    assert learned["mae_tokens"] < 0.5 * cold["mae_tokens"]
    assert abs(last["tau_gap_to_offline"]) < 0.15
    latency = last["simulated_burst_latency"]
    # the oracle bounds what ranking can buy; learned predictions get most of it
    assert latency["sjf_oracle_vs_fcfs"] < 1.0
    assert latency["sjf_online_e2e_mean_s"] < latency["sjf_cold_model_agnostic_e2e_mean_s"]
    assert set(first["simulated_burst_latency"]) >= {"fcfs_e2e_mean_s", "sjf_online_vs_fcfs"}
