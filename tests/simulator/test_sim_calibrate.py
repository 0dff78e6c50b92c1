"""``lengthwise simulate calibrate`` against a real stand-in vLLM server process.

The stand-in (``tests/standin_worker.py``) speaks vLLM's OpenAI API over real
HTTP with a fixed delay per token; a real vLLM worker is too slow for a unit
test. Checked: the output is a cost model ``simulate fidelity`` can load, with
the per-request overhead, and the probes sample like the live benchmark.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from simulator.calibrate import load_request_overhead
from simulator.cli import app
from simulator.latency import LinearStepModel, load_cost_model

STANDIN = Path(__file__).resolve().parents[1] / "standin_worker.py"


@pytest.fixture()
def standin():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--port", str(port),
                             "--default-len", "1000", "--token-delay-s", "0.004"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("stand-in worker did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_calibrate_writes_a_loadable_model_with_request_overhead(tmp_path, standin):
    out = tmp_path / "cal.json"
    result = CliRunner().invoke(app, [
        "calibrate", "--worker", standin, "--output", str(out), "--batch-sizes", "1,2,4",
        "--prompt-tokens", "32,128", "--decode-tokens", "12", "--overhead-probes", "3",
    ])
    assert result.exit_code == 0, result.output

    model = load_cost_model(out)
    assert isinstance(model, LinearStepModel)
    overhead = load_request_overhead(out)
    assert overhead is not None and overhead.pre_engine_s >= 0 and overhead.post_engine_s >= 0
    doc = json.loads(out.read_text())
    samples = doc["calibration"]["overhead_samples"]
    assert len(samples) == 3 and all(s["prompt_tokens"] > 0 for s in samples)
    assert "unique" in doc["calibration"]["prefix_cache"]
    # The 2048-token prefill probe does not fit the stand-in's 2048-token context
    # (prompt + 1 token): it is skipped, not sent to fail.
    printed = json.loads(result.output)
    prefills = [m["prefill_tokens"] for m in printed["measurements"] if m["kind"] == "prefill"]
    assert prefills == [16, 128, 512, 1024]

    # The probes sample like the live benchmark and go through the chat path too.
    received = httpx.get(f"{standin}/control").json()["received"]
    assert {"messages" in b for b in received} == {True, False}
    assert all(b["temperature"] == 0.7 and b["top_p"] == 0.95 for b in received)
    seeds = [b["seed"] for b in received]
    assert len(set(seeds)) == len(seeds)
