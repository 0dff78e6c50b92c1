import json

from typer.testing import CliRunner

from predictor.artifact import ensure_trained, read_meta
from predictor.cli import app


def test_ensure_trained_reuses_and_retrains_on_new_data(small_rows, small_config, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    small_rows.to_parquet(data / "rows.parquet")
    directory = tmp_path / "artifact"
    kwargs = {"feature_config": small_config[0], "params": small_config[1]}
    ensure_trained(data, directory, **kwargs)
    first = read_meta(directory)
    ensure_trained(data, directory, **kwargs)
    assert read_meta(directory)["created_utc"] == first["created_utc"]  # reused, not retrained
    small_rows.iloc[: len(small_rows) * 3 // 4].to_parquet(data / "rows.parquet")
    ensure_trained(data, directory, **kwargs)
    assert read_meta(directory)["data"]["fingerprint"] != first["data"]["fingerprint"]


def test_eval_command_writes_the_target_figures(small_artifact, small_rows, tmp_path):
    data = tmp_path / "eval.parquet"
    small_rows.to_parquet(data)
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(app, [
        "eval", "--data", str(data), "--output", str(out), "--artifact", str(small_artifact),
        "--split", "holdout", "--latency-requests", "20"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    for key in ("rows", "kendall_tau_mean", "kendall_tau_per_model", "kendall_tau_single",
                "mae_tokens", "p90_coverage", "predict_latency_p50_ms", "predict_latency_p99_ms",
                "baseline_per_model_mean", "baseline_input_length"):
        assert key in figures
    for baseline in ("baseline_per_model_mean", "baseline_input_length"):
        assert {"kendall_tau_mean", "mae_tokens"} <= set(figures[baseline])
    assert figures["rows"] > 0
    assert figures["rows_seen_in_training"] == 0  # the hold-out split really is held out
    assert 0.0 <= figures["p90_coverage"] <= 1.0
    assert "NaN" not in out.read_text()  # strict JSON: undefined taus are null


def test_predict_command_prints_json_and_rejects_bad_input(small_artifact):
    runner = CliRunner()
    ok = runner.invoke(app, ["predict", "Write a haiku.", "--model", "Qwen/Qwen2.5-14B-Instruct",
                             "--max-tokens", "8", "--artifact", str(small_artifact)])
    assert ok.exit_code == 0, ok.output
    answer = json.loads(ok.stdout)
    assert answer["model_known"] and answer["p90"] <= 8
    bad = runner.invoke(app, ["predict", "hi", "--model", "m", "--max-tokens", "0",
                              "--artifact", str(small_artifact)])
    assert bad.exit_code == 2
