"""What ``lengthwise simulate run`` does, behind typed option groups (the CLI only parses).

* :class:`EngineOptions`: the GPU (cost model) and the vLLM engine arguments;
* :class:`WorkloadOptions`: a trace file, or CASTILLO prompts with arrivals;
* :class:`GatewayOptions`: the policy, where its predicted lengths come from, admission;
* :func:`run_one` / :func:`run_load_sweep`: one replay, or latency vs load for several arms.

The policy (``fcfs | sjf | sjf-aged``, :class:`server.policy.PolicyName`) and the source of
the lengths it ranks by (:class:`simulator.predictions.PredictionSource`) are separate
choices; FCFS ranks by nothing and always uses ``none``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from server.policy import (
    UNLIMITED,
    AdmissionLimits,
    EngineQueueMode,
    PointEstimate,
    PolicyConfig,
    PolicyName,
)

from .latency import StepLatencyModel, load_cost_model
from .predictions import PredictionError, Predictions, PredictionSource, predictions_for
from .replica import EngineConfig
from .simulation import SimConfig, SimResult, run_simulation
from .trace import SimRequest

CASTILLO = "castillo"


class RunError(ValueError):
    """A bad option combination or input; the CLI prints it and exits 2."""


class EngineQueueChoice(StrEnum):
    AUTO = "auto"
    FCFS = "fcfs"
    PRIORITY = "priority"


class AdmissionMode(StrEnum):
    """What the gateway lets into each worker."""

    #: plain vLLM: every request goes straight into the engine's queue
    UNLIMITED = "unlimited"
    #: the gateway's default (``server.policy.AdmissionLimits()``): follow the engine
    GATEWAY = "gateway"


@dataclass(frozen=True)
class EngineOptions:
    cost_model: Path
    num_layers: int | None = None
    step_overhead_ms: float = 0.0
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: vLLM ``--scheduling-policy``; auto: fcfs for the fcfs policy, else priority
    engine_queue: EngineQueueChoice = EngineQueueChoice.AUTO
    max_model_len: int | None = None
    workers: int = 1

    def latency(self) -> StepLatencyModel:
        try:
            return load_cost_model(self.cost_model, self.num_layers, self.step_overhead_ms / 1000)
        except (ValueError, FileNotFoundError) as exc:
            raise RunError(str(exc)) from exc

    def engine_for(self, policy: PolicyName) -> EngineConfig:
        if self.engine_queue == EngineQueueChoice.AUTO:
            mode = EngineQueueMode.FCFS if policy == PolicyName.FCFS else EngineQueueMode.PRIORITY
        else:
            mode = EngineQueueMode(self.engine_queue.value)
        return replace(self.engine, queue_mode=mode)


@dataclass(frozen=True)
class WorkloadOptions:
    #: a trace file (.csv/.jsonl) or ``castillo``
    trace: str
    limit: int | None = None
    castillo_data: Path | None = None
    castillo_all_prompts: bool = False
    castillo_model: str | None = None
    num_requests: int = 2000
    rate: float = 1.0
    arrival_trace: Path | None = None
    seed: int = 0

    def load(self) -> list[SimRequest]:
        from .trace import TraceFormatError, load_trace
        from .workload import castillo_workload, load_castillo_rows, poisson_arrivals

        if self.trace != CASTILLO:
            try:
                requests = load_trace(self.trace, limit=self.limit)
            except TraceFormatError as exc:
                raise RunError(str(exc)) from exc
            if not requests:
                raise RunError(f"{self.trace}: no replayable requests")
            return requests
        from predictor.errors import CastilloDataError

        try:
            rows = load_castillo_rows(self.castillo_data, model=self.castillo_model,
                                      heldout_only=not self.castillo_all_prompts)
        except (FileNotFoundError, ValueError, CastilloDataError) as exc:
            raise RunError(str(exc)) from exc
        if self.arrival_trace is not None:
            try:
                arrivals = [r.arrival_time for r in load_trace(self.arrival_trace,
                                                               limit=self.num_requests)]
            except TraceFormatError as exc:
                raise RunError(str(exc)) from exc
        else:
            arrivals = poisson_arrivals(self.num_requests, self.rate, self.seed)
        return castillo_workload(rows, arrivals, seed=self.seed)


@dataclass(frozen=True)
class GatewayOptions:
    policy: PolicyName = PolicyName.FCFS
    #: None: the trace's own predictions if it has them, else the trained predictor on
    #: its prompts
    predictions: PredictionSource | None = None
    point_estimate: PointEstimate = PolicyConfig().point_estimate
    aging_s_per_token: float = PolicyConfig().aging_s_per_token
    noise_sigma: float = 0.5
    admission: AdmissionMode = AdmissionMode.UNLIMITED
    admission_max_seqs: int | None = None
    admission_max_predicted_tokens: float | None = None
    queue_capacity: int | None = None

    def policy_config(self, name: PolicyName | None = None) -> PolicyConfig:
        return PolicyConfig(name or self.policy, self.point_estimate, self.aging_s_per_token)

    def limits(self) -> AdmissionLimits:
        if self.admission == AdmissionMode.GATEWAY:
            return replace(AdmissionLimits(), max_sequences=self.admission_max_seqs,
                           max_predicted_tokens=self.admission_max_predicted_tokens)
        if self.admission_max_seqs is None and self.admission_max_predicted_tokens is None:
            return UNLIMITED
        return AdmissionLimits.fixed(self.admission_max_seqs, self.admission_max_predicted_tokens)


class PredictionCache:
    """Predictions per (source, estimate), computed once; loads the trained predictor lazily."""

    def __init__(self, requests: Sequence[SimRequest], gateway: GatewayOptions, seed: int) -> None:
        self.requests = requests
        self.gateway = gateway
        self.seed = seed
        self._predictor = None
        self._cache: dict[PredictionSource, Predictions] = {}

    def resolve(self, policy: PolicyName, source: PredictionSource | None) -> PredictionSource:
        if policy == PolicyName.FCFS:
            # FCFS never ranks by length; with several workers, routing then balances
            # sequence counts rather than anybody's prediction.
            return PredictionSource.NONE
        if source is not None:
            return source
        if all(r.predicted_tokens is not None for r in self.requests):
            return PredictionSource.TRACE
        if all(r.prompt_text for r in self.requests):
            return PredictionSource.PREDICTOR
        raise RunError("this trace has neither predictions nor prompt text: choose --predictions "
                       "oracle-noise (synthetic, named as such) or oracle")

    def get(self, policy: PolicyName, source: PredictionSource | None) -> Predictions:
        resolved = self.resolve(policy, source)
        if resolved not in self._cache:
            predictor = None
            if resolved == PredictionSource.PREDICTOR:
                if self._predictor is None:
                    from predictor.api import load_served_predictor

                    self._predictor = load_served_predictor()
                predictor = self._predictor
            try:
                self._cache[resolved] = predictions_for(
                    resolved, self.requests, predictor=predictor,
                    estimate=self.gateway.point_estimate.value,
                    noise_sigma=self.gateway.noise_sigma, seed=self.seed)
            except PredictionError as exc:
                raise RunError(str(exc)) from exc
        return self._cache[resolved]


def sim_config(engine: EngineOptions, gateway: GatewayOptions, policy: PolicyName) -> SimConfig:
    return SimConfig(
        engine=engine.engine_for(policy),
        workers=engine.workers,
        policy=gateway.policy_config(policy),
        admission=gateway.limits(),
        queue_capacity=gateway.queue_capacity,
        max_model_len=engine.max_model_len,
    )


@dataclass
class OneRun:
    result: SimResult
    predictions: Predictions
    config: SimConfig


def run_one(requests: Sequence[SimRequest], engine: EngineOptions, gateway: GatewayOptions,
            latency: StepLatencyModel, predictions: PredictionCache,
            progress: Callable[[int, float], None] | None = None) -> OneRun:
    preds = predictions.get(gateway.policy, gateway.predictions)
    config = sim_config(engine, gateway, gateway.policy)
    result = run_simulation(requests, preds.point, config, latency, progress=progress,
                            predicted_p90_tokens=preds.p90)
    return OneRun(result, preds, config)


def describe(run: OneRun, trace: str, latency: StepLatencyModel) -> dict:
    cfg = run.config
    return {
        "trace": trace,
        "policy": cfg.policy.name.value,
        "prediction_source": run.predictions.source.value,
        "engine": {
            "max_num_seqs": cfg.engine.max_num_seqs,
            "max_num_batched_tokens": cfg.engine.max_num_batched_tokens,
            "kv_cache_tokens": cfg.engine.kv_cache_tokens,
            "block_size": cfg.engine.block_size,
            "scheduling_policy": cfg.engine.queue_mode.value,
            "prefix_caching": cfg.engine.prefix_caching,
            "async_scheduling": cfg.engine.async_scheduling,
        },
        "workers": cfg.workers,
        "cost_model": latency.describe(),
    }


def parse_arms(policies: str, predictions: str) -> list[tuple[PolicyName, PredictionSource | None]]:
    """``--policies fcfs,sjf-aged --predictions predictor,oracle``: fcfs once, every other
    policy with every prediction source."""
    try:
        names = [PolicyName(p.strip()) for p in policies.split(",") if p.strip()]
        sources = [PredictionSource(s.strip()) for s in predictions.split(",") if s.strip()]
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    arms: list[tuple[PolicyName, PredictionSource | None]] = []
    for name in names:
        if name == PolicyName.FCFS:
            arms.append((name, PredictionSource.NONE))
        else:
            arms.extend((name, s) for s in (sources or [None]))
    if not arms:
        raise RunError("no arms to compare")
    return arms


def arm_label(policy: PolicyName, source: PredictionSource) -> str:
    return policy.value if policy == PolicyName.FCFS else f"{policy.value}/{source.value}"


def run_load_sweep(requests: Sequence[SimRequest], loads: Sequence[float],
                   arms: Sequence[tuple[PolicyName, PredictionSource | None]],
                   engine: EngineOptions, gateway: GatewayOptions, latency: StepLatencyModel,
                   predictions: PredictionCache,
                   progress: Callable[[str], None] | None = None) -> dict:
    from .sweep import PolicyArm, run_sweep

    if not loads or any(not x > 0 for x in loads):
        raise RunError("--sweep-rate needs positive loads")
    policy_arms = []
    sources = {}
    for policy, source in arms:
        preds = predictions.get(policy, source)
        label = arm_label(policy, preds.source)
        sources[label] = preds.source.value
        policy_arms.append(PolicyArm(label, policy, preds.point, preds.p90))
    base = sim_config(engine, gateway, PolicyName.SJF_AGED)
    fcfs = sim_config(engine, gateway, PolicyName.FCFS)
    report = run_sweep(requests, policy_arms, loads, base, latency, progress=progress,
                       config_for_arm=lambda arm: fcfs if arm.policy == PolicyName.FCFS else base)
    report.update({"requests": len(requests), "prediction_sources": sources,
                   "cost_model": latency.describe()})
    return report
