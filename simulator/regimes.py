"""The regime map: where length-aware scheduling pays, and by how much.

Every cell is one (GPU, workload, load) and replays the same requests under several
*arms*, each a gateway policy, its admission and the lengths it ranks by:

* ``vllm``: plain vLLM, FCFS, every request straight into the engine;
* ``gateway``: the gateway's defaults (``server.config.GatewayConfig()``: its policy and
  its admission that follows the engine), ranking by the trained predictor where the
  workload has prompts (CASTILLO) and otherwise by a synthetic predictor with the
  trained one's measured error (``oracle-noise`` at the sigma the trained predictor
  shows on CASTILLO's held-out prompts; named as such in the report);
* ``oracle``: the same gateway ranking by the true lengths (the most ordering can give);
* ``ordering-only``: the gateway's policy with no admission (the rank only reaches
  vLLM's priority queue): what order buys without admission;
* ``admission-only``: FCFS order with the gateway's admission: what admission buys
  without order.

Loads are offered rate over the saturation throughput that plain vLLM reaches on the
same requests and GPU (``sweep.saturation_throughput``); ``burst`` is an on/off arrival
process (3x saturation for 10 s, then 0.2x for 30 s; 0.9 on average).

Per cell and arm the report keeps mean/p50/p99 E2E, mean/p99 TTFT, throughput,
preemptions and drops, each arm's ratio to ``vllm``, and the share of the oracle's
mean-E2E gain over ``vllm`` that ``gateway`` captures. Everything runs the gateway's
own code (``server.policy``) on the simulated engines.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from server.policy import (
    UNLIMITED,
    AdmissionLimits,
    EngineQueueMode,
    PolicyConfig,
    PolicyName,
)

from .latency import RTX_4090_KV_TOKENS, RTX_PRO_6000_KV_TOKENS, StepLatencyModel
from .predictions import Predictions, PredictionSource, predictions_for
from .replica import EngineConfig
from .report import summarize
from .simulation import SimConfig, run_simulation
from .sweep import saturation_throughput
from .trace import SimRequest, load_trace
from .workload import castillo_workload, load_castillo_rows, poisson_arrivals

#: Offered load over plain vLLM's saturation throughput; ``BURST`` marks the on/off cell.
DEFAULT_LOADS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
BURST = "burst"
#: The on/off process of the burst cell: (rate over saturation, seconds) phases, repeated.
BURST_PHASES: tuple[tuple[float, float], ...] = ((3.0, 10.0), (0.2, 30.0))
#: vLLM's engine arguments the GPU settings do not change (256 slots, 2048 tokens a step).
_ENGINE_DEFAULTS = EngineConfig()
#: An arm's share of the oracle's gain is only defined when the oracle gains this much.
MIN_ORACLE_GAIN = 0.02


@dataclass(frozen=True)
class GpuSetting:
    """The simulated GPU: the operator tables' GPU with a given KV cache."""

    name: str
    kv_cache_tokens: int
    max_num_seqs: int = _ENGINE_DEFAULTS.max_num_seqs
    max_num_batched_tokens: int = _ENGINE_DEFAULTS.max_num_batched_tokens


#: The RTX PRO 6000 as measured (KV ~480k tokens) and the same tables with the KV cache
#: of a 24 GB card (41,408 tokens, as the RTX 4090 run logged).
ROOMY = GpuSetting("roomy", RTX_PRO_6000_KV_TOKENS)
MEMORY_BOUND = GpuSetting("memory-bound", RTX_4090_KV_TOKENS)
DEFAULT_GPUS: tuple[GpuSetting, ...] = (ROOMY, MEMORY_BOUND)


@dataclass(frozen=True)
class Workload:
    """A named request stream; ``prompts``: the trained predictor can rank it."""

    name: str
    build: Callable[[int, int], list[SimRequest]]
    prompts: bool


def _castillo(model: str) -> Workload:
    rows_cache: list = []

    def build(n: int, seed: int) -> list[SimRequest]:
        if not rows_cache:
            rows_cache.append(load_castillo_rows(None, model=model, heldout_only=True))
        return castillo_workload(rows_cache[0], poisson_arrivals(n, 1.0, seed), seed=seed)

    return Workload(f"castillo:{model}", build, True)


def _trace(name: str, file: str, max_tokens: int) -> Workload:
    def build(n: int, seed: int) -> list[SimRequest]:
        from lengthwise.common.paths import shared_dir

        requests = [r for r in load_trace(shared_dir() / "traces" / file)
                    if r.prompt_tokens + r.output_tokens <= max_tokens]
        # a window of n consecutive requests, a different one per seed
        start = random.Random(seed).randrange(max(1, len(requests) - n))
        window = requests[start:start + n]
        t0 = window[0].arrival_time
        return [replace(r, arrival_time=r.arrival_time - t0) for r in window]

    return Workload(name, build, False)


def _heavy_tail() -> Workload:
    """80% short answers (median 60 tokens) and 20% long ones (median 1,200), log-normal
    around each, prompts log-normal around 400 tokens: the shape length-aware scheduling
    is designed for."""

    def build(n: int, seed: int) -> list[SimRequest]:
        rng = random.Random(seed)
        out = []
        for i, t in enumerate(poisson_arrivals(n, 1.0, seed)):
            long = rng.random() < 0.2
            output = int(min(8000, max(1, rng.lognormvariate(
                math.log(1200 if long else 60), 0.5))))
            prompt = int(min(8000, max(1, rng.lognormvariate(math.log(400), 0.8))))
            out.append(SimRequest(f"h{i}", t, prompt, output))
        return out

    return Workload("heavy-tail-mix", build, False)


#: Longest prompt + output kept from the real traces: what both GPUs can hold (vLLM would
#: reject longer requests on the memory-bound card), so both replay the same requests.
TRACE_MAX_TOKENS = 32_768


def default_workloads() -> dict[str, Workload]:
    workloads = [
        _castillo("Llama-3.1-8B"),
        _castillo("Qwen2.5-7B"),
        _castillo("Mistral-7B"),
        _castillo("gemma-3-4b"),
        _trace("azure-conv", "azure2023_conv.csv", TRACE_MAX_TOKENS),
        _trace("azure-code", "azure2023_code.csv", TRACE_MAX_TOKENS),
        _trace("mooncake", "mooncake_conversation.jsonl", TRACE_MAX_TOKENS),
        _heavy_tail(),
    ]
    return {w.name: w for w in workloads}


@dataclass(frozen=True)
class Arm:
    label: str
    policy: PolicyConfig
    admission: AdmissionLimits
    queue_mode: EngineQueueMode
    #: rank by the truth (True), or by the workload's predictor (False); FCFS ranks by nothing
    oracle: bool = False


def default_arms(policy: PolicyConfig, admission: AdmissionLimits) -> list[Arm]:
    fcfs = PolicyConfig(PolicyName.FCFS)
    prio = EngineQueueMode.PRIORITY
    return [
        Arm("vllm", fcfs, UNLIMITED, EngineQueueMode.FCFS),
        Arm("gateway", policy, admission, prio),
        Arm("oracle", policy, admission, prio, oracle=True),
        Arm("ordering-only", policy, UNLIMITED, prio),
        Arm("admission-only", fcfs, admission, EngineQueueMode.FCFS),
    ]


def variant_arms(text: str, policy: PolicyConfig, admission: AdmissionLimits) -> list[Arm]:
    """Extra gateway arms for tuning the defaults: ``kv_budget=2;engine_queue=8,kv_budget=3``
    (``;`` between arms, ``,`` between fields; ``kv_budget=none`` ignores KV;
    ``aging_s_per_token`` changes the policy's aging)."""
    arms = []
    for spec in filter(None, (x.strip() for x in text.split(";"))):
        changes: dict = {}
        aging: dict = {}
        for item in spec.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key == "kv_budget":
                changes[key] = None if value.strip().lower() == "none" else float(value)
            elif key == "engine_queue":
                changes[key] = int(value)
            elif key == "aging_s_per_token":
                aging[key] = float(value)
            else:
                raise ValueError(f"unknown field {key!r} (kv_budget, engine_queue, "
                                 "aging_s_per_token)")
        label = "gateway[" + ",".join(f"{k}={v}" for k, v in {**changes, **aging}.items()) + "]"
        arms.append(Arm(label, replace(policy, **aging), replace(admission, **changes),
                        EngineQueueMode.PRIORITY))
    return arms


@dataclass(frozen=True)
class RegimeSpec:
    gpus: Sequence[GpuSetting] = DEFAULT_GPUS
    workloads: Sequence[str] = tuple(default_workloads())
    loads: Sequence[float] = DEFAULT_LOADS
    burst: bool = True
    seeds: Sequence[int] = (1,)
    num_requests: int = 2000
    block_size: int = _ENGINE_DEFAULTS.block_size
    extra_arms: Sequence[Arm] = field(default_factory=tuple)


def burst_arrivals(n: int, saturation: float, seed: int) -> list[float]:
    """On/off Poisson arrivals (:data:`BURST_PHASES`), rates relative to ``saturation``."""
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    phase = 0
    phase_end = BURST_PHASES[0][1]
    while len(out) < n:
        rate = BURST_PHASES[phase][0] * saturation
        t_next = t + rng.expovariate(rate)
        if t_next >= phase_end:
            t = phase_end
            phase = (phase + 1) % len(BURST_PHASES)
            phase_end = t + BURST_PHASES[phase][1]
            continue
        t = t_next
        out.append(t)
    return out


def burst_load() -> float:
    total = sum(s for _, s in BURST_PHASES)
    return sum(r * s for r, s in BURST_PHASES) / total


def _at_rate(requests: Sequence[SimRequest], rate: float) -> list[SimRequest]:
    from .workload import rescale_to_rate

    return rescale_to_rate(requests, rate)


def _metrics(summary: dict) -> dict:
    return {
        "e2e_mean_ms": summary["e2e_ms"]["mean"], "e2e_p50_ms": summary["e2e_ms"]["p50"],
        "e2e_p99_ms": summary["e2e_ms"]["p99"], "ttft_mean_ms": summary["ttft_ms"]["mean"],
        "ttft_p99_ms": summary["ttft_ms"]["p99"],
        "throughput_tok_s": summary["throughput_tok_s"],
        "sustained_throughput_tok_s": summary["sustained_throughput_tok_s"],
        "preemptions": summary["preemptions"],
        "dropped": summary["dropped"], "completed": summary["completed"],
    }


RATIO_KEYS = ("e2e_mean_ms", "e2e_p50_ms", "e2e_p99_ms", "ttft_mean_ms", "ttft_p99_ms",
              "throughput_tok_s", "sustained_throughput_tok_s")


def _ratios(arm: dict, base: dict) -> dict:
    return {k: (arm[k] / base[k] if base[k] else None) for k in RATIO_KEYS}


def captured_share(vllm: float, gateway: float, oracle: float) -> float | None:
    """Share of the oracle's mean-E2E gain over plain vLLM that the gateway captures."""
    gain = vllm - oracle
    if gain <= MIN_ORACLE_GAIN * vllm:
        return None
    return (vllm - gateway) / gain


@dataclass
class PredictorQuality:
    """The trained predictor's error on CASTILLO draws: what oracle-noise imitates."""

    sigma_log: float
    kendall_tau: float
    samples: int


def measure_predictor(requests: Sequence[SimRequest], preds: Predictions) -> PredictorQuality:
    from lengthwise.common.rank import kendall_tau

    true = np.array([r.output_tokens for r in requests], float)
    pred = np.maximum(np.array(preds.point, float), 1.0)
    log_err = np.log(pred) - np.log(true)
    return PredictorQuality(float(np.std(log_err)), float(kendall_tau(pred, true)), len(true))


class RegimeRunner:
    """Runs the cells of a :class:`RegimeSpec` (one process, one cell at a time)."""

    def __init__(self, spec: RegimeSpec, latency: StepLatencyModel, policy: PolicyConfig,
                 admission: AdmissionLimits, predictor=None,
                 workloads: dict[str, Workload] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.latency = latency
        self.policy = policy
        self.admission = admission
        self.predictor = predictor
        self.workloads = workloads or default_workloads()
        self.progress = progress or (lambda _line: None)
        self.arms = [*default_arms(policy, admission), *spec.extra_arms]
        self.quality: PredictorQuality | None = None

    def _engine(self, gpu: GpuSetting, mode: EngineQueueMode) -> EngineConfig:
        return EngineConfig(gpu.max_num_seqs, gpu.max_num_batched_tokens, gpu.kv_cache_tokens,
                            self.spec.block_size, mode)

    def _predictions(self, workload: Workload, requests: list[SimRequest],
                     seed: int) -> tuple[Predictions, Predictions]:
        oracle = predictions_for(PredictionSource.ORACLE, requests)
        if workload.prompts:
            if self.predictor is None:
                raise ValueError(f"{workload.name} needs the trained predictor")
            preds = predictions_for(PredictionSource.PREDICTOR, requests,
                                    predictor=self.predictor,
                                    estimate=self.policy.point_estimate.value)
            return preds, oracle
        sigma = self.quality.sigma_log if self.quality else 0.5
        return predictions_for(PredictionSource.ORACLE_NOISE, requests, noise_sigma=sigma,
                               seed=seed), oracle

    def calibrate_stand_in(self) -> PredictorQuality | None:
        """Measure the trained predictor on the first CASTILLO workload of the spec."""
        for name in self.spec.workloads:
            w = self.workloads[name]
            if w.prompts and self.predictor is not None:
                requests = w.build(self.spec.num_requests, self.spec.seeds[0])
                preds = predictions_for(PredictionSource.PREDICTOR, requests,
                                        predictor=self.predictor,
                                        estimate=self.policy.point_estimate.value)
                self.quality = measure_predictor(requests, preds)
                return self.quality
        return None

    def run_arm(self, arm: Arm, gpu: GpuSetting, requests: list[SimRequest],
                preds: Predictions, oracle: Predictions) -> dict:
        chosen = oracle if arm.oracle else preds
        config = SimConfig(engine=self._engine(gpu, arm.queue_mode), policy=arm.policy,
                           admission=arm.admission)
        result = run_simulation(requests, chosen.point, config, self.latency,
                                predicted_p90_tokens=chosen.p90)
        return {**_metrics(summarize(result)), "sim_wall_s": result.sim_wall_s}

    def run_cell(self, gpu: GpuSetting, workload: Workload, load: float | str,
                 seed: int, requests: list[SimRequest], saturation: float,
                 preds: Predictions, oracle: Predictions) -> dict:
        if load == BURST:
            times = burst_arrivals(len(requests), saturation, seed)
            cell_requests = [replace(r, arrival_time=t) for r, t in zip(requests, times)]
        else:
            cell_requests = _at_rate(requests, float(load) * saturation)
        arms = {arm.label: self.run_arm(arm, gpu, cell_requests, preds, oracle)
                for arm in self.arms}
        base = arms["vllm"]
        for metrics in arms.values():
            metrics["vs_vllm"] = _ratios(metrics, base)
        share = captured_share(base["e2e_mean_ms"], arms["gateway"]["e2e_mean_ms"],
                               arms["oracle"]["e2e_mean_ms"])
        return {"arms": arms, "gateway_share_of_oracle_gain": share}

    def run(self) -> dict:
        t0 = time.perf_counter()
        spec = self.spec
        quality = self.calibrate_stand_in()
        loads: list[float | str] = [*spec.loads, *([BURST] if spec.burst else [])]
        cells: list[dict] = []
        for gpu in spec.gpus:
            for name in spec.workloads:
                workload = self.workloads[name]
                for seed in spec.seeds:
                    requests = workload.build(spec.num_requests, seed)
                    preds, oracle = self._predictions(workload, requests, seed)
                    fcfs = SimConfig(engine=self._engine(gpu, EngineQueueMode.FCFS),
                                     policy=PolicyConfig(PolicyName.FCFS))
                    saturation = saturation_throughput(requests, fcfs, self.latency)
                    for load in loads:
                        cell = self.run_cell(gpu, workload, load, seed, requests, saturation,
                                             preds, oracle)
                        cells.append({"gpu": gpu.name, "workload": name, "load": load,
                                      "seed": seed, "saturation_req_s": saturation,
                                      "predictions": preds.source.value, **cell})
                        g = cell["arms"]["gateway"]["vs_vllm"]
                        o = cell["arms"]["oracle"]["vs_vllm"]
                        self.progress(
                            f"{gpu.name:>12} {name:<22} load {load!s:>5} seed {seed}: "
                            f"gateway E2E {g['e2e_mean_ms']:.3f}x thr {g['throughput_tok_s']:.3f}x"
                            f" | oracle {o['e2e_mean_ms']:.3f}x")
        return {
            "spec": {
                "gpus": [asdict(g) for g in spec.gpus], "workloads": list(spec.workloads),
                "loads": [*spec.loads, *([BURST] if spec.burst else [])],
                "burst_phases": [list(p) for p in BURST_PHASES], "burst_mean_load": burst_load(),
                "seeds": list(spec.seeds), "num_requests": spec.num_requests,
                "block_size": spec.block_size,
            },
            "gateway_defaults": {"policy": _policy_dict(self.policy),
                                 "admission": asdict(self.admission)},
            "arms": [{"label": a.label, "policy": _policy_dict(a.policy),
                      "admission": asdict(a.admission), "engine_queue": a.queue_mode.value,
                      "oracle": a.oracle} for a in self.arms],
            "stand_in_predictor": asdict(quality) if quality else None,
            "cost_model": self.latency.describe(),
            "cells": cells,
            "summary": summarize_cells(cells, [a.label for a in self.arms]),
            "wall_s": time.perf_counter() - t0,
        }


def _policy_dict(policy: PolicyConfig) -> dict:
    return {"name": policy.name.value, "point_estimate": policy.point_estimate.value,
            "aging_s_per_token": policy.aging_s_per_token,
            "prompt_token_weight": policy.prompt_token_weight}


def summarize_cells(cells: Sequence[dict], arms: Sequence[str]) -> list[dict]:
    """Seeds averaged: one row per (GPU, workload, load) with each arm's ratios to vLLM."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["gpu"], c["workload"], str(c["load"])), []).append(c)
    rows = []
    for (gpu, workload, load), group in groups.items():
        row: dict = {"gpu": gpu, "workload": workload, "load": load, "seeds": len(group)}
        for arm in arms:
            ratios = {}
            for k in RATIO_KEYS:
                vals = [c["arms"][arm]["vs_vllm"][k] for c in group
                        if c["arms"][arm]["vs_vllm"][k] is not None]
                ratios[k] = statistics.fmean(vals) if vals else None
            ratios["preemptions"] = statistics.fmean(c["arms"][arm]["preemptions"] for c in group)
            row[arm] = ratios
        shares = [c["gateway_share_of_oracle_gain"] for c in group
                  if c["gateway_share_of_oracle_gain"] is not None]
        row["gateway_share_of_oracle_gain"] = statistics.fmean(shares) if shares else None
        row["vllm_e2e_mean_ms"] = statistics.fmean(c["arms"]["vllm"]["e2e_mean_ms"]
                                                   for c in group)
        rows.append(row)
    return rows


# --- outputs -------------------------------------------------------------------------

#: One heatmap per figure: (file suffix, title, arm, ratio key or None for the share).
FIGURES: tuple[tuple[str, str, str, str | None], ...] = (
    ("gateway_mean_e2e", "Default gateway: mean E2E / plain vLLM", "gateway", "e2e_mean_ms"),
    ("oracle_mean_e2e", "Oracle ordering: mean E2E / plain vLLM", "oracle", "e2e_mean_ms"),
    ("gateway_p99_e2e", "Default gateway: p99 E2E / plain vLLM", "gateway", "e2e_p99_ms"),
    ("gateway_mean_ttft", "Default gateway: mean TTFT / plain vLLM", "gateway", "ttft_mean_ms"),
    ("gateway_throughput", "Default gateway: throughput / plain vLLM", "gateway",
     "throughput_tok_s"),
    ("gateway_share", "Share of the oracle's gain the gateway captures", "gateway", None),
    ("ordering_only_mean_e2e", "Ordering only (no admission): mean E2E / plain vLLM",
     "ordering-only", "e2e_mean_ms"),
    ("admission_only_mean_e2e", "Admission only (FCFS): mean E2E / plain vLLM",
     "admission-only", "e2e_mean_ms"),
)


def _grid(rows: list[dict], gpu: str, arm: str, key: str | None):
    workloads = list(dict.fromkeys(r["workload"] for r in rows if r["gpu"] == gpu))
    loads = list(dict.fromkeys(r["load"] for r in rows if r["gpu"] == gpu))
    grid = np.full((len(workloads), len(loads)), np.nan)
    for r in rows:
        if r["gpu"] != gpu:
            continue
        v = r["gateway_share_of_oracle_gain"] if key is None else r[arm][key]
        if v is not None:
            grid[workloads.index(r["workload"]), loads.index(r["load"])] = v
    return workloads, loads, grid


def plot_heatmaps(report: dict, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["summary"]
    gpus = list(dict.fromkeys(r["gpu"] for r in rows))
    paths = []
    for suffix, title, arm, key in FIGURES:
        if not any(arm in r for r in rows):
            continue
        fig, axes = plt.subplots(1, len(gpus), figsize=(6.2 * len(gpus), 4.6), squeeze=False)
        for ax, gpu in zip(axes[0], gpus):
            workloads, loads, grid = _grid(rows, gpu, arm, key)
            if key is None:
                vmin, vmax, cmap = 0.0, 1.0, "viridis"
            else:
                span = max(0.05, float(np.nanmax(np.abs(grid - 1.0))) if np.isfinite(grid).any()
                           else 0.05)
                vmin, vmax = 1.0 - span, 1.0 + span
                cmap = "RdYlGn" if key == "throughput_tok_s" else "RdYlGn_r"
            im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(loads)), loads)
            ax.set_yticks(range(len(workloads)), workloads)
            ax.set_xlabel("load (offered / plain vLLM saturation)")
            ax.set_title(gpu)
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(title)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{suffix}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown_table(report: dict) -> str:
    """Per GPU: a row per workload, a column per load; each cell gives the default
    gateway's mean E2E over plain vLLM, the oracle's in brackets, then the gateway's p99
    E2E and throughput ratios."""
    rows = report["summary"]
    lines = ["# Regime map", "",
             ("Cells: default gateway mean E2E / plain vLLM (oracle in brackets); "
              "p99 E2E ratio; throughput ratio. Seeds averaged; "
              f"{report['spec']['num_requests']} requests per run."), ""]
    for gpu in dict.fromkeys(r["gpu"] for r in rows):
        loads = list(dict.fromkeys(r["load"] for r in rows if r["gpu"] == gpu))
        lines += [f"## {gpu}", "", "| workload | " + " | ".join(loads) + " |",
                  "|---|" + "---|" * len(loads)]
        for workload in dict.fromkeys(r["workload"] for r in rows if r["gpu"] == gpu):
            cells = []
            for load in loads:
                r = next((x for x in rows if x["gpu"] == gpu and x["workload"] == workload
                          and x["load"] == load), None)
                if r is None:
                    cells.append("")
                    continue
                g, o = r["gateway"], r["oracle"]
                cells.append(f"**{_fmt(g['e2e_mean_ms'])}** ({_fmt(o['e2e_mean_ms'])}); "
                             f"p99 {_fmt(g['e2e_p99_ms'])}; thr {_fmt(g['throughput_tok_s'], 3)}")
            lines.append(f"| {workload} | " + " | ".join(cells) + " |")
        lines.append("")
    worst = worst_throughput(report)
    if worst:
        lines.append(f"Default gateway's worst throughput ratio: {worst['ratio']:.3f} "
                     f"({worst['gpu']}, {worst['workload']}, load {worst['load']}).")
    return "\n".join(lines) + "\n"


def worst_throughput(report: dict, arm: str = "gateway") -> dict | None:
    """The cell (single seed) where ``arm``'s throughput falls furthest below plain vLLM."""
    worst = None
    for c in report["cells"]:
        v = c["arms"][arm]["vs_vllm"]["throughput_tok_s"]
        if v is not None and (worst is None or v < worst["ratio"]):
            worst = {"ratio": v, "gpu": c["gpu"], "workload": c["workload"],
                     "load": c["load"], "seed": c["seed"]}
    return worst


def write_outputs(report: dict, output: Path, plot: bool = True,
                  say=print) -> list[Path]:
    """The JSON report, the markdown table beside it and, with ``plot`` (and matplotlib, the
    ``bench`` extra; without it ``say`` gets a one-line notice), one heatmap per figure."""
    from lengthwise.common.extras import plotting_available
    from lengthwise.common.files import write_json_report

    output.parent.mkdir(parents=True, exist_ok=True)
    report["worst_gateway_throughput"] = worst_throughput(report)
    stem = output.with_suffix("")
    figures = plot_heatmaps(report, stem) if plot and plotting_available(say) else []
    table = output.with_suffix(".md")
    table.write_text(markdown_table(report), encoding="utf-8")
    report["figures"] = [str(p) for p in figures]
    report["table"] = str(table)
    write_json_report(output, report)
    return [output, table, *figures]
