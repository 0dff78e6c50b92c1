"""``lengthwise simulate fidelity`` on gateway request logs the test writes.

The logs are produced by the simulator itself (a known cost model and known
per-request overheads) and written with the gateway's own ``RequestLog``; the
fidelity command must then replay them with ~0 % error, and flag a log whose
live times are doubled.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from server.policy import AdmissionLimits, EngineQueueMode, PolicyConfig, PolicyName
from server.request_log import RequestLog, RequestRecord
from simulator.cli import app
from simulator.latency import LinearStepModel
from simulator.replica import EngineConfig
from simulator.simulation import SimConfig, run_simulation
from simulator.trace import SimRequest

STEP = LinearStepModel({"intercept": 0.02, "tokens": 2e-4, "seqs": 1e-3, "decode_kv": 1e-6})
PRE_S, POST_S = 0.015, 0.004
ENGINE = EngineConfig(max_num_seqs=4, max_num_batched_tokens=256, kv_cache_tokens=4096,
                      block_size=16, queue_mode=EngineQueueMode.PRIORITY, chunked_prefill=False,
                      prefix_caching=False, async_scheduling=False)  # as the bench worker
ADMISSION = 3
BASE_UNIX = 1_795_000_000.0
ENGINE_ARGS = ["--max-num-seqs", "4", "--max-num-batched-tokens", "256", "--max-model-len", "256",
               "--kv-cache-tokens", "4096", "--block-size", "16", "--no-chunked-prefill",
               "--engine-queue", "priority", "--admission-max-seqs", str(ADMISSION),
               "--aging-s-per-token", "0.05"]


@pytest.fixture()
def cost_model(tmp_path):
    path = tmp_path / "calibrated.json"
    STEP.save(path)
    doc = json.loads(path.read_text())
    doc["request_overhead"] = {"pre_engine_s": PRE_S, "post_engine_s": POST_S, "source": "test"}
    path.write_text(json.dumps(doc))
    return path


def _burst(n: int, seed: int) -> list[tuple[SimRequest, float]]:
    """A burst: every client arrives at 0; the gateway queues each after its prediction."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        true = rng.randint(4, 90)
        req = SimRequest(f"lw-{i:03d}", 0.0, rng.randint(8, 150), true,
                         gateway_delay_s=0.01 * i)
        out.append((req, max(1.0, true * rng.uniform(0.5, 1.5))))
    return out


def _write_live_log(path, policy: PolicyName, burst, time_scale: float = 1.0) -> None:
    """Run the simulator as the 'live' system and log what a gateway would have logged."""
    requests = [r for r, _ in burst]
    config = SimConfig(engine=ENGINE, policy=PolicyConfig(policy, aging_s_per_token=0.05,
                                                          prompt_token_weight=0.0),
                       admission=AdmissionLimits.fixed(ADMISSION), max_model_len=256,
                       dispatch_delay_s=PRE_S, response_delay_s=POST_S)
    result = run_simulation(requests, [p for _, p in burst], config, STEP)
    log = RequestLog(path)
    log.open()
    for i, rec in enumerate(result.records):
        req, seq = rec.request, rec.seq
        stream = i % 5 != 0  # non-streaming requests have no TTFT in the gateway's log
        log.write(RequestRecord(
            request_id=req.request_id, arrival_unix=BASE_UNIX + req.gateway_delay_s,
            endpoint="chat", model="m", stream=stream, n=1, max_tokens=128, policy=policy.value,
            status="ok", http_status=200, prompt_tokens=req.prompt_tokens,
            predicted_mean=rec.predicted_tokens, predicted_p50=None, predicted_p90=None,
            predicted_tokens=rec.predicted_tokens, completion_tokens=req.output_tokens,
            finish_reasons=["length"], worker="w", attempts=1,
            queue_wait_s=rec.dispatch_time - req.gateway_delay_s,
            ttft_s=seq.first_token * time_scale if stream else None,
            e2e_s=rec.completion_time * time_scale,
        ))
    # one failed request: not replayed, counted
    log.write(RequestRecord(
        request_id="lw-failed", arrival_unix=BASE_UNIX + 0.5, endpoint="chat", model="m",
        stream=True, n=1, max_tokens=128, policy=policy.value, status="upstream_error",
        http_status=503, prompt_tokens=None, predicted_mean=None, predicted_p50=None,
        predicted_p90=None, predicted_tokens=10.0, completion_tokens=None, finish_reasons=[],
        worker=None, attempts=2, queue_wait_s=None, ttft_s=None, e2e_s=1.0))
    log.close()


def _fidelity(tmp_path, cost_model, *logs, extra=()):
    out = tmp_path / "fidelity.json"
    result = CliRunner().invoke(app, [
        "fidelity", *map(str, logs), "--cost-model", str(cost_model), *ENGINE_ARGS,
        "--client-arrivals", "burst", "--output", str(out), *extra,
    ])
    return result, out


def test_a_log_the_simulator_produced_replays_with_no_error(tmp_path, cost_model):
    burst = _burst(30, seed=3)
    fcfs, sjf = tmp_path / "gateway_fcfs.requests.jsonl", tmp_path / "gateway_sjf.requests.jsonl"
    _write_live_log(fcfs, PolicyName.FCFS, burst)
    _write_live_log(sjf, PolicyName.SJF_AGED, burst)

    result, out = _fidelity(tmp_path, cost_model, fcfs, sjf)

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["arms"]) == {"gateway_fcfs", "gateway_sjf"}
    assert report["pass"] is True
    for arm in report["arms"].values():
        assert arm["requests"] == 30 and arm["skipped_not_ok"] == 1
        assert arm["ttft_ms"]["n"] == 24  # streaming subset only
        assert arm["e2e_ms"]["n"] == 30
        for metric in ("e2e_ms", "ttft_ms"):
            for stat in ("mean", "p50", "p90"):
                assert abs(arm[metric]["rel_err"][stat]) < 1e-3, (metric, stat, arm[metric])
        # the queue held requests, so the replay had an order to get right
        assert arm["queue_wait_ms"]["live"]["p90"] > 100
    assert report["arms"]["gateway_sjf"]["policy"] == "sjf-aged"
    assert report["setup"]["request_overhead"]["pre_engine_s"] == PRE_S
    assert "gateway_sjf" in result.output and "PASS" in result.output


def test_doubled_live_times_fail_the_ten_percent_check(tmp_path, cost_model):
    log = tmp_path / "gateway_sjf.requests.jsonl"
    _write_live_log(log, PolicyName.SJF_AGED, _burst(20, seed=5), time_scale=2.0)

    result, out = _fidelity(tmp_path, cost_model, log, extra=["--strict"])

    assert result.exit_code == 1
    arm = json.loads(out.read_text())["arms"]["gateway_sjf"]
    assert arm["pass"] is False
    assert arm["checks"] == {"e2e_mean": False, "ttft_mean": False}
    assert arm["e2e_ms"]["rel_err"]["mean"] == pytest.approx(-0.5, abs=1e-3)
    assert "FAIL" in result.output


def test_the_overheads_matter_and_can_be_overridden(tmp_path, cost_model):
    log = tmp_path / "gateway_fcfs.requests.jsonl"
    _write_live_log(log, PolicyName.FCFS, _burst(20, seed=7))

    result, out = _fidelity(tmp_path, cost_model, log,
                            extra=["--request-overhead-ms", "0", "--response-overhead-ms", "0"])

    assert result.exit_code == 0, result.output
    arm = json.loads(out.read_text())["arms"]["gateway_fcfs"]
    # without the per-request overheads the replay is faster than the "live" run
    assert arm["e2e_ms"]["rel_err"]["mean"] < -1e-3
    assert arm["ttft_ms"]["rel_err"]["mean"] < -1e-3


def test_a_log_mixing_policies_is_refused(tmp_path, cost_model):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    burst = _burst(5, seed=1)
    _write_live_log(a, PolicyName.FCFS, burst)
    _write_live_log(b, PolicyName.SJF_AGED, [(replace(r, request_id=r.request_id + "b"), p)
                                             for r, p in burst])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(a.read_text() + b.read_text())

    result, _ = _fidelity(tmp_path, cost_model, mixed)

    assert result.exit_code == 2
    assert "one policy per log" in result.output


@pytest.mark.parametrize("chunked, first_step_tokens", [(True, 256), (False, 200)])
def test_without_chunked_prefill_a_prompt_that_does_not_fit_waits(chunked, first_step_tokens):
    # vLLM with --no-enable-chunked-prefill (the bench worker) stops admitting at the
    # first waiting prompt larger than the remaining budget instead of chunking it.
    engine = replace(ENGINE, max_num_seqs=8, chunked_prefill=chunked)
    config = SimConfig(engine=engine, policy=PolicyConfig(PolicyName.FCFS), max_model_len=512,
                       record_steps=True)
    requests = [SimRequest("a", 0.0, 200, 3), SimRequest("b", 0.0, 100, 3)]
    result = run_simulation(requests, [0.0, 0.0], config, STEP)
    assert result.replicas[0].steps[0].num_scheduled_tokens == first_step_tokens
    assert result.gateway.completed == 2


def test_what_if_bounds_what_ordering_can_buy_with_an_oracle(tmp_path, cost_model):
    burst = _burst(30, seed=5)
    fcfs = tmp_path / "gateway_fcfs.requests.jsonl"
    _write_live_log(fcfs, PolicyName.FCFS, burst)

    result, out = _fidelity(tmp_path, cost_model, fcfs, extra=("--what-if", "8,2"))

    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["what_if"]["rows"]
    assert [r["admission_max_sequences"] for r in rows] == [8, 2]
    for row in rows:
        ratios = row["e2e_mean_over_fcfs"]
        assert ratios["fcfs"] == 1.0
        # shortest-first by the true lengths cannot lose to arrival order on a burst
        assert ratios["sjf_oracle"] < 1.0
    # a tighter admission limit leaves more in the queue for ordering to act on
    assert rows[1]["e2e_mean_over_fcfs"]["sjf_oracle"] < rows[0]["e2e_mean_over_fcfs"]["sjf_oracle"]
    assert "what-if, admission 2" in result.output
