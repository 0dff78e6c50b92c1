"""Simulator speed: the whole Azure 2023 conv trace through one simulated worker.

``lengthwise bench sim-speed`` writes the wall and CPU time under ``reports/`` (the speed
target: the whole replay under 20 s of wall time), never a timed test assertion.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from server.policy import PolicyConfig, PolicyName
from simulator.latency import StepLatencyModel
from simulator.replica import EngineConfig
from simulator.report import summarize
from simulator.simulation import SimConfig, run_simulation
from simulator.trace import load_trace

#: The speed target of the whole Azure conv replay, seconds of wall time.
TARGET_WALL_S = 20.0


def speed_benchmark(trace: Path, latency: StepLatencyModel, engine: EngineConfig) -> dict:
    t0 = time.perf_counter()
    requests = load_trace(trace)
    load_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    result = run_simulation(requests, [1.0] * len(requests),
                            SimConfig(engine=engine, policy=PolicyConfig(PolicyName.FCFS)), latency)
    cpu_s = time.process_time() - cpu0
    summary = summarize(result)
    return {
        "trace": str(trace),
        "requests": len(requests),
        "trace_load_s": load_s,
        "sim_wall_s": result.sim_wall_s,
        "sim_cpu_s": cpu_s,
        "engine_steps": summary["engine_steps"],
        "events": result.events,
        "us_per_step": 1e6 * result.sim_wall_s / max(1, summary["engine_steps"]),
        "simulated_s": result.end_time,
        "target_wall_s": TARGET_WALL_S,
        "python": platform.python_version(),
        "summary": summary,
    }
