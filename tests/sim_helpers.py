"""Small builders shared by the simulator tests (no mocks: real engine, real policy)."""

from __future__ import annotations

from server.policy import AdmissionLimits, EngineQueueMode, PolicyConfig, PolicyName
from simulator.latency import LinearStepModel
from simulator.replica import EngineConfig
from simulator.simulation import SimConfig
from simulator.trace import SimRequest

#: 10 ms per step plus 0.1 ms per token: simple enough to reason about by hand
STEP_MODEL = LinearStepModel({"intercept": 0.010, "tokens": 0.0001})


def constant_steps(seconds: float = 0.010) -> LinearStepModel:
    return LinearStepModel({"intercept": seconds})


def config(
    *,
    policy: PolicyName = PolicyName.FCFS,
    mode: EngineQueueMode = EngineQueueMode.FCFS,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    kv_cache_tokens: int = 512,
    block_size: int = 16,
    workers: int = 1,
    admission: AdmissionLimits | None = None,
    record_steps: bool = True,
) -> SimConfig:
    return SimConfig(
        engine=EngineConfig(max_num_seqs, max_num_batched_tokens, kv_cache_tokens, block_size, mode),
        workers=workers,
        policy=PolicyConfig(name=policy),
        admission=admission or AdmissionLimits.fixed(),
        record_steps=record_steps,
    )


def synthetic(n: int, seed: int = 1, rate: float = 20.0, max_prompt: int = 120,
              max_output: int = 60) -> list[SimRequest]:
    import random

    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        out.append(SimRequest(f"r{i:04d}", t, rng.randint(1, max_prompt), rng.randint(1, max_output)))
    return out
