"""Load sweeps: run several policies over a range of offered loads.

Load ``rho`` is the offered request rate divided by the deployment's
saturation throughput ``mu``, measured on the same requests: all of them
arrive at t = 0 under FCFS and ``mu`` is the completion rate between the 10th
and 90th percentile of completions (the ramp-up and drain tail are left out).
Arrival times are then rescaled so the mean rate is ``rho * mu``; prompts,
lengths and predictions stay the same at every load, so policies differ only
in their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from server.policy import PolicyName

from .latency import StepLatencyModel
from .report import summarize
from .simulation import SimConfig, run_simulation
from .trace import SimRequest
from .workload import rescale_to_rate


@dataclass(frozen=True)
class PolicyArm:
    """One arm: a policy and the lengths it ranks by (``label``: ``policy/source``)."""

    label: str
    policy: PolicyName
    predictions: list[float]
    #: predicted p90 outputs for the KV footprint admission counts (None: the point)
    p90: list[float] | None = None


def saturation_throughput(
    requests: Sequence[SimRequest], config: SimConfig, latency: StepLatencyModel
) -> float:
    from server.policy import EngineQueueMode

    burst = [replace(r, arrival_time=0.0) for r in requests]
    cfg = replace(
        config,
        policy=replace(config.policy, name=PolicyName.FCFS),
        engine=replace(config.engine, queue_mode=EngineQueueMode.FCFS),
    )
    result = run_simulation(burst, [1.0] * len(burst), cfg, latency)
    done = sorted(rec.seq.finished for rec in result.records if rec.seq and rec.seq.finished)
    if len(done) < 10:
        raise ValueError("too few completed requests to measure saturation throughput")
    lo, hi = int(0.1 * len(done)), int(0.9 * len(done))
    span = done[hi] - done[lo]
    return (hi - lo) / span if span > 0 else float("inf")


def run_sweep(
    requests: Sequence[SimRequest],
    arms: Sequence[PolicyArm],
    loads: Sequence[float],
    config: SimConfig,
    latency: StepLatencyModel,
    progress: Callable[[str], None] | None = None,
    config_for_arm: Callable[[PolicyArm], SimConfig] | None = None,
) -> dict:
    """``config_for_arm`` gives an arm its own engine settings (e.g. FCFS runs
    vLLM's fcfs queue, SJF arms its priority queue); default: ``config``."""
    mu = saturation_throughput(requests, config, latency)
    results: dict[str, list[dict]] = {arm.label: [] for arm in arms}
    for rho in loads:
        scaled = rescale_to_rate(requests, rho * mu)
        for arm in arms:
            arm_config = config_for_arm(arm) if config_for_arm else config
            cfg = replace(arm_config, policy=replace(arm_config.policy, name=arm.policy))
            res = run_simulation(scaled, arm.predictions, cfg, latency,
                                 predicted_p90_tokens=arm.p90)
            summary = summarize(res, {"load": rho, "rate_req_s": rho * mu})
            results[arm.label].append(summary)
            if progress:
                e2e = summary["e2e_ms"]["mean"]
                progress(f"load {rho:.2f} {arm.label:>12}: mean e2e {e2e:9.1f} ms")
    report: dict = {
        "saturation_req_s": mu,
        "loads": list(loads),
        "policies": results,
    }
    base = results.get("fcfs")
    if base:
        report["mean_e2e_relative_to_fcfs"] = {
            label: [r["e2e_ms"]["mean"] / b["e2e_ms"]["mean"] for r, b in zip(rows, base)]
            for label, rows in results.items()
        }
        report["mean_ttft_relative_to_fcfs"] = {
            label: [r["ttft_ms"]["mean"] / b["ttft_ms"]["mean"] for r, b in zip(rows, base)]
            for label, rows in results.items()
        }
    for label, label_rows in results.items():
        policy, _, source = label.partition("/")
        oracle = f"{policy}/oracle"
        if source and source != "oracle" and oracle in results:
            # 0 = as good as the oracle, 1 = no better than FCFS.
            gap = []
            for r, o, b in zip(label_rows, results[oracle], base or label_rows):
                span = b["e2e_ms"]["mean"] - o["e2e_ms"]["mean"]
                # undefined when the oracle gains (almost) nothing over FCFS
                meaningful = span > 0.01 * b["e2e_ms"]["mean"]
                gap.append((r["e2e_ms"]["mean"] - o["e2e_ms"]["mean"]) / span if meaningful else None)
            report.setdefault("gap_to_oracle", {})[label] = {
                "mean_e2e_ratio_to_oracle": [
                    r["e2e_ms"]["mean"] / o["e2e_ms"]["mean"]
                    for r, o in zip(label_rows, results[oracle])
                ],
                "share_of_oracle_gain_missed": gap,
            }
    return report


def plot_sweep(report: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    loads = np.asarray(report["loads"])
    for label, rows in report["policies"].items():
        axes[0].plot(loads, [r["e2e_ms"]["mean"] / 1000 for r in rows], marker="o", label=label)
        axes[1].plot(loads, [r["e2e_ms"]["p99"] / 1000 for r in rows], marker="o", label=label)
    for ax, title in zip(axes, ("mean end-to-end latency", "p99 end-to-end latency")):
        ax.set_xlabel("load (offered rate / saturation throughput)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
