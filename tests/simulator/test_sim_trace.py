"""Trace loaders on small files written here, and on the real shared traces."""

from __future__ import annotations

import itertools

import pytest

from lengthwise.common.paths import shared_dir
from simulator.trace import TraceFormatError, load_trace, write_generic_jsonl
from simulator.workload import castillo_workload, poisson_arrivals, rescale_to_rate


def test_azure_csv(tmp_path):
    p = tmp_path / "azure.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.0000000,10,0\n"
    )
    reqs = load_trace(p)
    assert [r.prompt_tokens for r in reqs] == [374, 396, 10]
    assert reqs[0].arrival_time == 0.0
    assert reqs[1].arrival_time == pytest.approx(4.3145789, abs=1e-6)
    assert reqs[2].output_tokens == 1  # a zero-length completion still emits one token


def test_mooncake_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"timestamp": 1000, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1]}\n'
        '{"timestamp": 3500, "input_length": 70, "output_length": 3, "hash_ids": [0]}\n'
    )
    reqs = load_trace(p)
    assert [(r.arrival_time, r.prompt_tokens, r.output_tokens) for r in reqs] == [
        (0.0, 6758, 500),
        (2.5, 70, 3),
    ]


def test_generic_csv_seconds_and_nanoseconds(tmp_path):
    s = tmp_path / "s.csv"
    s.write_text("arrival_time_s,input_tokens,output_tokens,prompt_text,model\n"
                 "0.5,10,20,hello,m1\n0.25,5,6,,\n")
    ns = tmp_path / "ns.csv"
    ns.write_text("arrival_time_ns,input_tokens,output_tokens\n500000000,10,20\n250000000,5,6\n")
    a, b = load_trace(s), load_trace(ns)
    assert [(r.arrival_time, r.prompt_tokens) for r in a] == [(0.0, 5), (0.25, 10)]
    assert [(r.arrival_time, r.prompt_tokens) for r in b] == [(0.0, 5), (0.25, 10)]
    assert a[1].prompt_text == "hello" and a[1].model == "m1"
    assert a[0].prompt_text is None


def test_generic_jsonl_round_trip(tmp_path):
    s = tmp_path / "s.csv"
    s.write_text("arrival_time_s,input_tokens,output_tokens,prompt_text\n1,10,20,hi\n2,5,6,yo\n")
    reqs = load_trace(s)
    out = tmp_path / "g.jsonl"
    write_generic_jsonl(reqs, out)
    assert load_trace(out) == reqs


def test_gateway_request_log(tmp_path):
    from server.request_log import RequestLog, RequestRecord

    log = RequestLog(tmp_path / "req.jsonl")
    log.open()
    base = {"endpoint": "/v1/chat/completions", "model": "m", "stream": True, "n": 1, "max_tokens": None,
                "policy": "sjf-aged", "http_status": 200, "predicted_mean": 40.0, "predicted_p50": 35.0,
                "predicted_p90": 90.0, "finish_reasons": ["stop"], "worker": "w0", "attempts": 1,
                "queue_wait_s": 0.0, "ttft_s": 0.1, "e2e_s": 1.0}
    log.write(RequestRecord(request_id="x", arrival_unix=1_700_000_010.0, status="ok",
                            prompt_tokens=12, predicted_tokens=40.0, completion_tokens=33, **base))
    log.write(RequestRecord(request_id="y", arrival_unix=1_700_000_000.0, status="ok",
                            prompt_tokens=7, predicted_tokens=8.0, completion_tokens=9, **base))
    log.write(RequestRecord(request_id="z", arrival_unix=1_700_000_005.0, status="timeout",
                            prompt_tokens=7, predicted_tokens=8.0, completion_tokens=None, **base))
    log.close()
    reqs = load_trace(tmp_path / "req.jsonl")
    assert [(r.request_id, r.arrival_time, r.prompt_tokens, r.output_tokens, r.predicted_tokens)
            for r in reqs] == [("y", 0.0, 7, 9, 8.0), ("x", 10.0, 12, 33, 40.0)]


@pytest.mark.parametrize("content,suffix", [
    ("a,b\n1,2\n", ".csv"),
    ("", ".csv"),
    ("not json\n", ".jsonl"),
    ("arrival_time_s,input_tokens,output_tokens\nx,1,2\n", ".csv"),
    ("arrival_time_s,input_tokens,output_tokens\n1,-4,2\n", ".csv"),
])
def test_bad_traces_raise_a_clear_error(tmp_path, content, suffix):
    p = tmp_path / f"bad{suffix}"
    p.write_text(content)
    with pytest.raises(TraceFormatError):
        load_trace(p)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(TraceFormatError):
        load_trace(tmp_path / "nope.csv")
    p = tmp_path / "t.txt"
    p.write_text("x")
    with pytest.raises(TraceFormatError):
        load_trace(p)


TRACES = shared_dir() / "traces"


@pytest.mark.parametrize("name,count", [
    ("azure2023_conv.csv", 19366),
    ("azure2023_code.csv", 8819),
    ("mooncake_conversation.jsonl", 12031),
])
def test_real_shared_traces(name, count):
    path = TRACES / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    reqs = load_trace(path)
    assert len(reqs) == count
    assert reqs[0].arrival_time == 0.0
    assert all(a.arrival_time <= b.arrival_time for a, b in itertools.pairwise(reqs))
    assert 3000 < reqs[-1].arrival_time < 4000 or "mooncake" in name
    assert all(r.prompt_tokens >= 0 and r.output_tokens >= 1 for r in reqs)


def test_castillo_workload_draws_lengths_from_the_row():
    from simulator.workload import CastilloRow

    rows = [CastilloRow("p1", "say hi", 5, (3, 4, 5), "m"), CastilloRow("p2", "essay", 9, (900,), "m")]
    arrivals = poisson_arrivals(200, 10.0, seed=3)
    reqs = castillo_workload(rows, arrivals, seed=3)
    assert reqs == castillo_workload(rows, arrivals, seed=3)  # seeded
    for r in reqs:
        assert (r.prompt_text, r.output_tokens in (3, 4, 5)) in {("say hi", True)} or (
            r.prompt_text == "essay" and r.output_tokens == 900)
    rate = (len(reqs) - 1) / reqs[-1].arrival_time
    assert 7 < rate < 13
    faster = rescale_to_rate(reqs, 40.0)
    assert (len(faster) - 1) / faster[-1].arrival_time == pytest.approx(40.0)


def test_real_castillo_rows_when_present():
    from simulator.workload import load_castillo_rows

    path = shared_dir() / "castillo"
    if not path.exists():
        pytest.skip("CASTILLO not present")
    heldout = load_castillo_rows(path, model="Llama-3.1-8B")
    everything = load_castillo_rows(path, model="Llama-3.1-8B", heldout_only=False)
    assert 100 < len(heldout) < 0.4 * len(everything)
    assert all(len(r.output_sizes) == 10 and r.prompt_text for r in heldout)
    assert {r.model for r in heldout} == {"meta-llama--Llama-3.1-8B-Instruct"}
