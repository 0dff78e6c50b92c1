"""Benchmarks (not tests): simulator speed, and the headline CASTILLO policy study.

Both print their figures and write JSON under ``reports/``:

* :func:`speed_benchmark`: the whole Azure 2023 conv trace through one worker
  with the RTX PRO 6000 Llama-3.1-8B operator tables; wall and CPU seconds.
* :func:`castillo_study`: fcfs vs sjf (trained predictor) vs sjf-oracle on the
  CASTILLO-backed workload (held-out prompts of the cost model's LLM) at loads
  0.5-0.95, for two deployments: plain vLLM (unlimited gateway admission) and
  a gateway that caps each worker's in-flight requests, repeated over seeds.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from server.policy import AdmissionLimits, EngineQueueMode, PolicyConfig, PolicyName
from simulator.latency import StepLatencyModel
from simulator.predictions import PredictionSource, predictions_for
from simulator.replica import EngineConfig
from simulator.report import summarize
from simulator.simulation import SimConfig, run_simulation
from simulator.sweep import PolicyArm, run_sweep
from simulator.trace import load_trace
from simulator.workload import castillo_workload, load_castillo_rows, poisson_arrivals


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
        "target_wall_s": 20.0,
        "python": platform.python_version(),
        "summary": summary,
    }


STUDY_POLICIES = ("fcfs", "sjf", "sjf-oracle")


def castillo_study(
    latency: StepLatencyModel,
    engine: EngineConfig,
    predictor,
    *,
    model_filter: str,
    loads: Sequence[float],
    num_requests: int,
    seeds: Sequence[int],
    admission_caps: Sequence[int | None],
    progress: Callable[[str], None] | None = None,
) -> dict:
    rows = load_castillo_rows(None, model=model_filter, heldout_only=True)
    labels = {cap: "vllm_unlimited_admission" if cap is None else f"gateway_admission_{cap}"
              for cap in admission_caps}
    per_seed: dict[int | None, list[dict]] = {cap: [] for cap in admission_caps}
    for seed in seeds:
        # Poisson arrivals at rate 1; run_sweep rescales them to each load.
        requests = castillo_workload(rows, poisson_arrivals(num_requests, 1.0, seed), seed)
        preds_model = predictions_for(PredictionSource.PREDICTOR, requests, predictor=predictor)
        arms = [
            PolicyArm("fcfs", PolicyName.FCFS, [1.0] * len(requests)),
            PolicyArm("sjf", PolicyName.SJF, preds_model),
            PolicyArm("sjf-oracle", PolicyName.SJF, predictions_for(PredictionSource.ORACLE, requests)),
        ]
        quality = _rank_quality(requests, preds_model)
        for cap in admission_caps:
            sjf_cfg = SimConfig(
                engine=replace(engine, queue_mode=EngineQueueMode.PRIORITY),
                admission=AdmissionLimits.fixed(cap),
            )
            fcfs_cfg = replace(sjf_cfg, engine=replace(engine, queue_mode=EngineQueueMode.FCFS))
            if progress:
                progress(f"{labels[cap]} seed {seed}: {len(requests)} requests")
            report = run_sweep(requests, arms, loads, sjf_cfg, latency, progress=progress,
                               config_for_arm=lambda a, f=fcfs_cfg, s=sjf_cfg: f if a.label == "fcfs" else s)
            report["seed"] = seed
            report["predictor_rank_quality"] = quality
            per_seed[cap].append(report)
    deployments = {
        labels[cap]: {
            "admission_max_sequences": cap,
            "mean_over_seeds": _mean_over_seeds(per_seed[cap], loads),
            "per_seed": per_seed[cap],
        }
        for cap in admission_caps
    }
    return {
        "workload": {
            "source": "CASTILLO held-out prompts (predictor.artifact.split_holdout), degenerate "
                      "rows removed; true length = one of the row's 10 output_sizes (seeded); "
                      "Poisson arrivals rescaled to load x saturation throughput",
            "model_filter": model_filter,
            "distinct_prompts": len({r.prompt_id for r in rows}),
            "requests_per_run": num_requests,
            "seeds": list(seeds),
        },
        "engine": {
            "max_num_seqs": engine.max_num_seqs,
            "max_num_batched_tokens": engine.max_num_batched_tokens,
            "kv_cache_tokens": engine.kv_cache_tokens,
            "block_size": engine.block_size,
        },
        "cost_model": latency.describe(),
        "policies": {
            "fcfs": "gateway FCFS, vLLM --scheduling-policy fcfs (plain vLLM)",
            "sjf": "gateway SJF on the trained predictor's mean, rank passed as vLLM priority",
            "sjf-oracle": "the same with the true length",
        },
        "loads": list(loads),
        "deployments": deployments,
    }


def _rank_quality(requests, preds) -> dict:
    from lengthwise.common.rank import kendall_tau

    tau = kendall_tau(preds, [r.output_tokens for r in requests])
    mae = statistics.fmean(abs(r.output_tokens - p) for r, p in zip(requests, preds))
    return {"kendall_tau_vs_drawn_length": tau, "mae_tokens": mae}


def _mean_over_seeds(reports: list[dict], loads: Sequence[float]) -> dict:
    labels = list(reports[0]["policies"])
    out: dict = {"saturation_req_s": statistics.fmean(r["saturation_req_s"] for r in reports)}
    for metric in ("e2e_ms", "ttft_ms"):
        for stat in ("mean", "p99"):
            out[f"{metric}_{stat}"] = {
                label: [
                    statistics.fmean(r["policies"][label][i][metric][stat] for r in reports)
                    for i in range(len(loads))
                ]
                for label in labels
            }
    base = out["e2e_ms_mean"]["fcfs"]
    out["mean_e2e_relative_to_fcfs"] = {
        label: [v / b for v, b in zip(vals, base)] for label, vals in out["e2e_ms_mean"].items()
    }
    sjf, oracle = out["e2e_ms_mean"]["sjf"], out["e2e_ms_mean"]["sjf-oracle"]
    out["sjf_mean_e2e_ratio_to_oracle"] = [s / o for s, o in zip(sjf, oracle)]
    out["sjf_share_of_oracle_gain"] = [
        (b - s) / (b - o) if (b - o) > 0.01 * b else None for s, o, b in zip(sjf, oracle, base)
    ]
    return out


def plot_study(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deps = study["deployments"]
    fig, axes = plt.subplots(len(deps), 2, figsize=(10, 3.6 * len(deps)), squeeze=False)
    loads = study["loads"]
    for row, (label, dep) in enumerate(deps.items()):
        agg = dep["mean_over_seeds"]
        for col, stat in enumerate(("mean", "p99")):
            ax = axes[row][col]
            for pol, vals in agg[f"e2e_ms_{stat}"].items():
                ax.plot(loads, [v / 1000 for v in vals], marker="o", label=pol)
            ax.set_title(f"{label}: {stat} E2E")
            ax.set_xlabel("load (offered / saturation)")
            ax.set_ylabel("seconds")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
