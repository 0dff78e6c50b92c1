"""Operator metrics of the gateway over real HTTP, in front of a stand-in vLLM process:
p90 coverage agrees with the request log, queue depth carries the policy, and the
gateway exports its own process metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.request_log import read_request_log

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_p90_coverage_counts_single_sequence_requests_as_the_log_records_them(
    standin_factory, gateway_factory, tmp_path
):
    worker = standin_factory()
    log_path = tmp_path / "coverage.jsonl"
    gw = gateway_factory([worker.url], request_log_path=log_path)
    # Lengths from 1 to 400 tokens: short ones fall under any sensible p90, long ones
    # above it, so both label values are exercised by the real predictor.
    single = [(CHAT, {"messages": [{"role": "user", "content": f"Say hi LEN={n}"}],
                      "max_tokens": 512, "stream": n % 2 == 0})
              for n in (1, 2, 3, 400, 450)]
    single.append((COMPLETIONS, {"prompt": "Once upon a time LEN=300", "max_tokens": 512}))
    # Several sequences: usage sums over them, so coverage is not observable.
    several = [(CHAT, {"messages": [{"role": "user", "content": "LEN=5"}], "n": 2}),
               (COMPLETIONS, {"prompt": ["a LEN=6", "b LEN=6"]})]
    for path, body in single + several:
        resp = httpx.post(gw.url + path, json={"model": "standin", **body}, timeout=30)
        assert resp.status_code == 200, resp.text

    records = read_request_log(log_path)
    assert len(records) == len(single) + len(several)
    expected = {"true": 0, "false": 0}
    for record in records:
        # The single-sequence requests are the ones with these lengths (see above).
        if record["completion_tokens"] in (1, 2, 3, 400, 450, 300):
            covered = record["completion_tokens"] <= record["predicted_p90"]
            expected["true" if covered else "false"] += 1
    assert sum(expected.values()) == len(single)

    samples = _samples(gw.url)
    got = {c: samples.get(("lengthwise_prediction_p90_coverage_total",
                           (("covered", c), ("model", "standin"))), 0.0)
           for c in ("true", "false")}
    assert got == expected
    assert expected["true"] >= 1 and expected["false"] >= 1  # both branches ran


def test_queue_depth_is_labelled_with_the_policy_and_process_metrics_are_exported(
    standin_factory, gateway_factory
):
    worker = standin_factory()
    gw = gateway_factory([worker.url], policy="fcfs")
    samples = _samples(gw.url)
    assert samples[("lengthwise_queue_depth", (("policy", "fcfs"),))] == 0.0
    assert not [key for key in samples if key[0] == "lengthwise_queue_depth"
                and key[1] != (("policy", "fcfs"),)]
    assert samples[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert any(key[0] == "python_info" for key in samples)
