"""The applied-temperature histogram that EDT serves from inside the vLLM worker.

The processors are run in a child Python process (as in a worker: the port comes
from LENGTHWISE_EDT_METRICS_PORT and the server is started once per process) and
their /metrics is scraped over HTTP; the counts are checked against the float64
reference temperatures of the same logits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_edt_processors import reference_temperature

from lengthwise.worker.edt.temperature_metrics import (
    METRIC_NAME,
    PORT_ENV,
    TEMPERATURE_BUCKETS,
    AppliedTemperatureHistogram,
    _HistogramCollector,
)
from lengthwise.worker.process import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in the child: a V1 processor (3 rows, 2 of them EDT, two decode steps) and a
# Model Runner V2 processor (2 slots, 1 of them EDT, one step) in one process, then
# scrapes that process's own metrics endpoint.
CHILD = r"""
import json, os, sys, urllib.request
import torch
sys.path.insert(0, sys.argv[1])
from test_edt_processors import (mrv2_context, mrv2_processor, params, random_logits,
                                 vllm_config)
from vllm.v1.sample.logits_processor import BatchUpdate
from lengthwise.worker.edt.vllm_v1 import EntropyDynamicTemperatureLogitsProcessor

v1 = EntropyDynamicTemperatureLogitsProcessor(vllm_config(), torch.device("cpu"), False)
setting = [(0.7, 1.0, None), (1.0, None, None), (1.2, 0.5, 0.6)]
added = [(i, params(t, th, n), [1], []) for i, (t, th, n) in enumerate(setting)]
v1.update_state(BatchUpdate(batch_size=3, removed=[], added=added, moved=[]))
z_v1 = random_logits(3, seed=11)
t0 = torch.tensor([s[0] for s in setting]).unsqueeze(1)
for _ in range(2):
    v1.apply(z_v1.clone().div_(t0))

v2 = mrv2_processor()
v2.add_request(1, params(0.9, 2.0))
v2.add_request(3, params(1.0))
v2.apply_staged_writes()
z_v2 = random_logits(2, seed=12)
out = v2.apply(z_v2.clone(), mrv2_context([1, 3]))
port = os.environ.get("LENGTHWISE_EDT_METRICS_PORT")
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
print(json.dumps({"metrics": text, "z_v1": z_v1.tolist(), "z_v2": z_v2.tolist(),
                  "v2_tempered": not torch.equal(out[0], z_v2[0])}))
"""


def _run_child(port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, PORT_ENV: str(port), "LENGTHWISE_EDT_METRICS_HOST": "127.0.0.1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                     os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent)],
                          check=False, capture_output=True, text=True, env=env, timeout=240,
                          cwd=REPO_ROOT)


def _histogram(text: str) -> tuple[dict[str, float], float, float]:
    buckets, total, count = {}, None, None
    for family in text_string_to_metric_families(text):
        if family.name != METRIC_NAME:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                buckets[s.labels["le"]] = s.value
            elif s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
    assert buckets and total is not None and count is not None, text
    return buckets, total, count


def _expected(temperatures: list[float]) -> dict[float, int]:
    return {b: sum(t <= b for t in temperatures) for b in TEMPERATURE_BUCKETS}


def test_processors_serve_the_applied_temperatures_of_edt_rows_only():
    port = free_port()
    result = _run_child(port)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    z_v1, z_v2 = np.array(out["z_v1"]), np.array(out["z_v2"])
    # EDT rows only: V1 rows 0 and 2 (two steps each), V2 slot 1; row 1 / slot 3 have no EDT.
    temperatures = 2 * [reference_temperature(z_v1[0], 1.0, 0.8, 0.7),
                        reference_temperature(z_v1[2], 0.5, 0.6, 1.2)]
    temperatures.append(reference_temperature(z_v2[0], 2.0, 0.8, 0.9))
    assert out["v2_tempered"]
    buckets, total, count = _histogram(out["metrics"])
    assert count == len(temperatures) == buckets["+Inf"]
    assert total == pytest.approx(sum(temperatures), rel=1e-4)
    for bound, want in _expected(temperatures).items():
        assert buckets[repr(bound)] == want, (bound, buckets, temperatures)
    # Row 0 of each seeded batch is sharply peaked: the floor makes it greedy, counted at
    # le=0; V1's row 2 is tempered to a temperature above 0.
    assert buckets["0.0"] == 3 and 0 < temperatures[1] < 1.2


def test_a_taken_port_is_logged_and_decoding_goes_on():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env_port = port
        result = subprocess.run(
            [sys.executable, "-c", CHILD.replace(
                'text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", '
                'timeout=10).read().decode()', 'text = ""'), str(Path(__file__).parent)],
            check=False, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
            env={**os.environ, PORT_ENV: str(env_port),
                 "LENGTHWISE_EDT_METRICS_HOST": "127.0.0.1",
                 "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                           os.environ.get("PYTHONPATH")) if p)},
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "EDT metrics off" in result.stderr and f":{port}" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["v2_tempered"]


def test_histogram_weights_leave_rows_out_and_buckets_are_cumulative():
    histogram = AppliedTemperatureHistogram()
    histogram.observe(torch.tensor([0.0, 0.05, 0.31, 0.7, 3.0]),
                      weights=torch.tensor([True, True, False, True, True]))
    histogram.observe(torch.tensor([1.0]))
    registry = CollectorRegistry()
    registry.register(_HistogramCollector(histogram))
    buckets, total, count = _histogram(generate_latest(registry).decode())
    kept = [0.0, 0.05, 0.7, 3.0, 1.0]
    assert count == 5 and total == pytest.approx(sum(kept))
    for bound, want in _expected(kept).items():
        assert buckets[repr(bound)] == want
    assert buckets["+Inf"] == 5


def test_worker_config_passes_the_port_only_when_configured(monkeypatch, tmp_path):
    from lengthwise.worker.process import WorkerConfig

    monkeypatch.setenv(PORT_ENV, "1234")  # inherited from the caller: never passed on
    plain = WorkerConfig(model_path=tmp_path)
    assert PORT_ENV not in plain.environment() and plain.edt_metrics_url is None
    served = WorkerConfig(model_path=tmp_path, host="127.0.0.1", edt_metrics_port=9555)
    env = served.environment()
    assert env[PORT_ENV] == "9555" and env["LENGTHWISE_EDT_METRICS_HOST"] == "127.0.0.1"
    assert served.edt_metrics_url == "http://127.0.0.1:9555/metrics"
    # Without the EDT processor there is nothing to serve the port.
    assert WorkerConfig(model_path=tmp_path, logits_processors=(),
                        edt_metrics_port=9555).edt_metrics_url is None
