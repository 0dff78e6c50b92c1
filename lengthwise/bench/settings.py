"""The benchmarks' settings and their defaults, defined once: the benchmark modules run
with them and ``lengthwise bench``'s options default to them. Kept apart from the
benchmarks, whose imports (psutil, pandas, vLLM's client) the command line must not load
just to show its options."""

from __future__ import annotations

from dataclasses import dataclass

from lengthwise.common.cpu_worker import LIVE_BENCH_TEMPERATURE, LIVE_BENCH_TOP_P
from lengthwise.common.edt_params import DEFAULT_N
from server.policy import PolicyConfig

#: requests per peer-benchmark run, and the Poisson scenario's rate (about the CPU
#: worker's capacity on these answers, so short queues come and go)
PEER_REQUESTS = 200
PEER_POISSON_RATE = 3.5

@dataclass(frozen=True)
class SoakSettings:
    duration_s: float = 1800.0
    load_fraction: float = 0.8
    calibrate_s: float = 60.0
    max_tokens: int = 64
    #: a hand-set gateway cap (``None``: the gateway's default admission)
    max_sequences_per_worker: int | None = None
    #: closed-loop clients that measure capacity (enough to keep the engine's batch full)
    calibrate_clients: int = 96
    sample_interval_s: float = 5.0
    seed: int = 7


@dataclass(frozen=True)
class Workload:
    num_requests: int = 160
    #: "poisson" (rate below) or "burst" (all at t=0)
    arrivals: str = "poisson"
    rate_per_s: float = 2.0
    max_tokens: int = 256
    temperature: float = LIVE_BENCH_TEMPERATURE
    top_p: float = LIVE_BENCH_TOP_P
    seed: int = 1234
    #: gateway admission limit (sequences in flight on the worker)
    #: a hand-set gateway cap (``None``: the gateway's default admission)
    max_sequences_per_worker: int | None = None
    #: the gateway's sjf arm uses this policy (sjf-aged with the default aging)
    sjf_policy: str = "sjf-aged"
    aging_s_per_token: float = PolicyConfig().aging_s_per_token
    point_estimate: str = "mean"


@dataclass(frozen=True)
class CostConfig:
    requests: int = 48
    max_tokens: int = 128
    concurrency: int = 32
    temperature: float = 1.0
    theta: float = 1.0
    n: float = DEFAULT_N
    rounds: int = 2
    seed: int = 0


@dataclass(frozen=True)
class PeerScenario:
    name: str
    #: requests per second; ``inf`` is a burst
    request_rate: float
    num_prompts: int


@dataclass(frozen=True)
class PeerSettings:
    scenarios: tuple[PeerScenario, ...] = (
        PeerScenario("burst", float("inf"), PEER_REQUESTS),
        PeerScenario("poisson", PEER_POISSON_RATE, PEER_REQUESTS),
    )
    rounds: int = 3
    seed: int = 0
    #: cap on a reference answer's tokens (vLLM's ShareGPT loader drops prompt+output > 2048)
    max_reference_tokens: int = 1024
