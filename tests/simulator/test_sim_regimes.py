"""The regime map on a small synthetic workload: structure, invariants, outputs."""

from __future__ import annotations

import json
import random

import pytest
from sim_helpers import STEP_MODEL

from server.policy import AdmissionLimits, PolicyConfig
from simulator.regimes import (
    BURST,
    GpuSetting,
    RegimeRunner,
    RegimeSpec,
    Workload,
    burst_arrivals,
    burst_load,
    captured_share,
    variant_arms,
    write_outputs,
)
from simulator.trace import SimRequest


def _bimodal(n: int, seed: int) -> list[SimRequest]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(1.0)
        out.append(SimRequest(f"s{i}", t, rng.randint(10, 60),
                              rng.choice((rng.randint(2, 20), rng.randint(150, 300)))))
    return out


@pytest.fixture(scope="module")
def report():
    spec = RegimeSpec(gpus=(GpuSetting("big", 200_000, 32, 512), GpuSetting("small", 2_048, 32, 512)),
                      workloads=("bimodal",), loads=(0.5, 1.5), burst=True, seeds=(0,),
                      num_requests=150,
                      extra_arms=tuple(variant_arms("kv_budget=3", PolicyConfig(),
                                                    AdmissionLimits())))
    runner = RegimeRunner(spec, STEP_MODEL, PolicyConfig(), AdmissionLimits(),
                          workloads={"bimodal": Workload("bimodal", _bimodal, False)})
    return runner.run()


def test_every_cell_compares_every_arm_with_plain_vllm(report):
    labels = {a["label"] for a in report["arms"]}
    assert labels == {"vllm", "gateway", "oracle", "ordering-only", "admission-only",
                      "gateway[kv_budget=3.0]"}
    assert len(report["cells"]) == 2 * 3  # two GPUs x (two loads + burst)
    for cell in report["cells"]:
        assert set(cell["arms"]) == labels
        assert cell["arms"]["vllm"]["vs_vllm"]["e2e_mean_ms"] == 1.0
        for arm in cell["arms"].values():
            assert arm["completed"] + arm["dropped"] == 150
    loads = {c["load"] for c in report["cells"]}
    assert loads == {0.5, 1.5, BURST}


def test_ordering_pays_only_where_a_queue_forms(report):
    rows = {(r["gpu"], r["load"]): r for r in report["summary"]}
    # half load on the big GPU: no queue, nothing for order to do
    assert rows[("big", "0.5")]["oracle"]["e2e_mean_ms"] == pytest.approx(1.0, abs=0.02)
    # overload: shortest-first by the truth beats FCFS on the mean
    assert rows[("big", "1.5")]["oracle"]["e2e_mean_ms"] < 0.97


def test_outputs_are_written_beside_the_report(tmp_path, report):
    paths = write_outputs(dict(report), tmp_path / "map.json")
    data = json.loads((tmp_path / "map.json").read_text())
    assert data["worst_gateway_throughput"]["ratio"] > 0
    table = (tmp_path / "map.md").read_text()
    assert "## big" in table and "## small" in table and "bimodal" in table
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) >= 6 and all(p.stat().st_size > 0 for p in pngs)


def test_burst_arrivals_average_the_configured_load():
    times = burst_arrivals(20_000, saturation=10.0, seed=3)
    assert times == sorted(times)
    assert len(times) / times[-1] == pytest.approx(burst_load() * 10.0, rel=0.05)


def test_captured_share_is_undefined_without_an_oracle_gain():
    assert captured_share(10.0, 8.0, 6.0) == pytest.approx(0.5)
    assert captured_share(10.0, 10.5, 9.9) is None


def test_variant_arms_parse_and_reject_unknown_fields():
    arms = variant_arms("kv_budget=2;kv_budget=none,engine_queue=8", PolicyConfig(),
                        AdmissionLimits())
    assert [a.admission.kv_budget for a in arms] == [2.0, None]
    assert arms[1].admission.engine_queue == 8
    with pytest.raises(ValueError):
        variant_arms("max_tokens=3", PolicyConfig(), AdmissionLimits())
