"""``lengthwise simulate`` end to end through its Typer app (real files, real models)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lengthwise.common.paths import shared_dir
from simulator.cli import app
from simulator.latency import LinearStepModel

TABLES = shared_dir() / "costmodels" / "llmservingsim_rtxpro6000_llama31_8b"


@pytest.fixture()
def trace(tmp_path):
    p = tmp_path / "t.csv"
    lines = ["arrival_time_s,input_tokens,output_tokens"]
    lines += [f"{i * 0.05},{50 + (i * 37) % 400},{5 + (i * 53) % 120}" for i in range(200)]
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture()
def linear(tmp_path):
    p = tmp_path / "lin.json"
    LinearStepModel({"intercept": 0.01, "tokens": 2e-5, "decode_kv": 1e-8}).save(p)
    return p


def test_run_writes_json_and_per_request(tmp_path, trace, linear):
    out, rows = tmp_path / "o.json", tmp_path / "r.csv"
    result = CliRunner().invoke(app, [
        str(trace), "--cost-model", str(linear), "--max-num-seqs", "16",
        "--max-num-batched-tokens", "512", "--kv-cache-tokens", "8192", "--block-size", "16",
        "--engines", "2", "--policy", "sjf", "--predictions", "oracle", "--output", str(out),
        "--per-request", str(rows),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["requests"] == 200 and data["completed"] == 200
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert set(data[key]) == {"mean", "p50", "p90", "p99"}
    for key in ("throughput_tok_s", "preemptions", "peak_kv_usage", "sim_wall_s"):
        assert key in data
    assert data["prediction_source"] == "oracle" and data["policy"] == "sjf"
    assert len(rows.read_text().splitlines()) == 201


def test_the_gateways_default_admission_holds_requests_the_engine_cannot_run(trace, linear):
    args = [str(trace), "--cost-model", str(linear), "--max-num-seqs", "2",
            "--policy", "sjf-aged", "--predictions", "oracle"]
    plain = CliRunner().invoke(app, args)
    gateway = CliRunner().invoke(app, [*args, "--admission", "gateway"])
    assert plain.exit_code == 0 and gateway.exit_code == 0, gateway.output
    # 2 running slots + the default engine queue of 2: the rest waits at the gateway
    assert json.loads(plain.stdout)["queue_ms"]["p99"] == 0.0
    assert json.loads(gateway.stdout)["queue_ms"]["p99"] > 0.0


def test_operator_table_run(tmp_path, trace):
    if not TABLES.exists():
        pytest.skip("shared cost model not present")
    result = CliRunner().invoke(app, [
        "run", str(trace), "--cost-model", str(TABLES), "--num-layers", "32",
        "--policy", "fcfs", "--per-request", str(tmp_path / "r.parquet"),
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["completed"] == 200


def test_sjf_without_prompts_or_predictions_needs_an_explicit_source(trace, linear):
    result = CliRunner().invoke(app, [str(trace), "--cost-model", str(linear), "--policy", "sjf"])
    assert result.exit_code == 2
    assert "oracle-noise" in result.output
    ok = CliRunner().invoke(app, [str(trace), "--cost-model", str(linear), "--policy", "sjf",
                                  "--predictions", "oracle-noise"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["prediction_source"] == "oracle-noise"


def test_sweep_writes_report_and_plot(tmp_path, trace, linear):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    result = CliRunner().invoke(app, [
        str(trace), "--cost-model", str(linear), "--max-num-seqs", "8",
        "--sweep-rate", "0.5,0.9", "--policies", "fcfs,sjf",
        "--sweep-predictions", "oracle-noise,oracle", "--output", str(out), "--plot",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["loads"] == [0.5, 0.9]
    assert set(data["policies"]) == {"fcfs", "sjf/oracle-noise", "sjf/oracle"}
    assert data["mean_e2e_relative_to_fcfs"]["fcfs"] == [1.0, 1.0]
    assert len(data["gap_to_oracle"]["sjf/oracle-noise"]["mean_e2e_ratio_to_oracle"]) == 2
    assert png.stat().st_size > 0


def test_bad_input_is_a_clear_error(tmp_path, linear):
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    result = CliRunner().invoke(app, [str(bad), "--cost-model", str(linear)])
    assert result.exit_code == 2
    assert "unrecognised columns" in result.output
    result = CliRunner().invoke(app, [str(bad), "--cost-model", str(tmp_path / "nope.json")])
    assert result.exit_code == 2


def test_request_log_replays_with_its_own_predictions(tmp_path, linear):
    from server.request_log import RequestLog, RequestRecord

    log = RequestLog(tmp_path / "log.jsonl")
    log.open()
    for i in range(50):
        log.write(RequestRecord(
            request_id=f"q{i}", arrival_unix=1.7e9 + i * 0.1, endpoint="/v1/completions",
            model="m", stream=False, n=1, max_tokens=None, policy="sjf", status="ok",
            http_status=200, prompt_tokens=20 + i, predicted_mean=None, predicted_p50=None,
            predicted_p90=None, predicted_tokens=float(100 - i), completion_tokens=10 + i,
            finish_reasons=["stop"], worker="w0", attempts=1, queue_wait_s=0.0, ttft_s=0.1,
            e2e_s=1.0))
    log.close()
    result = CliRunner().invoke(app, [str(tmp_path / "log.jsonl"), "--cost-model", str(linear),
                                      "--policy", "sjf"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prediction_source"] == "trace" and data["completed"] == 50
