"""Where the gateway's CPU goes per request, and how much of it is the length prediction.

Runs the real gateway process (``lengthwise serve --worker``, online learning off so no
background refit is counted) in front of the stand-in worker (tests/standin_worker.py:
no model, almost no CPU of its own), sends the overhead probe (``bench overhead``'s
1-token chat request) sequentially, and reads the gateway process's CPU time from
/proc before and after (Linux). Then times the same prediction in this process, on
the trained predictor the gateway loads. Prints the figures and writes
reports/gateway_cpu_per_request.json.

Usage: .venv/bin/python scripts/gateway_cpu_per_request.py [REQUESTS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from predictor.api import load_default_predictor
from predictor.files import write_json_report
from predictor.locations import reports_dir
from server.live_bench import GatewayProcess, overhead_request
from server.worker_process import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    body = overhead_request(MODEL)
    port = free_port()
    standin = subprocess.Popen([sys.executable, str(REPO / "tests" / "standin_worker.py"),
                                "--port", str(port), "--model", MODEL, "--token-delay-s", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["LENGTHWISE_ONLINE_LEARNING"] = "false"
    tmp = Path(tempfile.mkdtemp())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        args = ["--request-log", str(tmp / "requests.jsonl")]
        with (GatewayProcess(f"http://127.0.0.1:{port}", free_port(), args, tmp / "gw.log") as gw,
              httpx.Client(timeout=30, trust_env=False) as client):
            for _ in range(50):  # warm up: connections, first-call caches
                client.post(gw.url + "/v1/chat/completions", json=body).raise_for_status()
            assert gw.proc is not None
            cpu_before, began = process_cpu_s(gw.proc.pid), time.perf_counter()
            for _ in range(requests):
                client.post(gw.url + "/v1/chat/completions", json=body).raise_for_status()
            gateway_cpu_ms = (process_cpu_s(gw.proc.pid) - cpu_before) / requests * 1000
            wall_ms = (time.perf_counter() - began) / requests * 1000
    finally:
        standin.kill()

    predictor = load_default_predictor()
    messages = body["messages"]
    for _ in range(50):
        predictor.predict(messages, MODEL, body["max_tokens"])
    cpu_before = time.process_time()
    for _ in range(requests):
        predictor.predict(messages, MODEL, body["max_tokens"])
    predict_cpu_ms = (time.process_time() - cpu_before) / requests * 1000

    report = {"requests": requests, "request": body, "online_learning": False,
              "gateway_cpu_ms_per_request": gateway_cpu_ms,
              "round_trip_wall_ms_per_request": wall_ms,
              "prediction_cpu_ms_per_call": predict_cpu_ms,
              "prediction_share_of_gateway_cpu": predict_cpu_ms / gateway_cpu_ms}
    print(f"gateway CPU per request {gateway_cpu_ms:.2f} ms (round trip {wall_ms:.2f} ms wall); "
          f"one prediction {predict_cpu_ms:.2f} ms CPU = "
          f"{report['prediction_share_of_gateway_cpu']:.0%} of it")
    print("wrote", write_json_report(reports_dir() / "gateway_cpu_per_request.json", report))


if __name__ == "__main__":
    main()
