"""Benchmark of online learning: the served model starts cold, the gateway learns its lengths.

Two modes, one report (``reports/online_learning_bench.json``):

* ``replay`` (no worker needed): the prompts of a profile of the served model
  (``lengthwise profile``) stream through :class:`OnlineLearningPredictor` on top of
  the CASTILLO-trained predictor, in a seeded order; each request's actual length is
  one of the prompt's sampled lengths. Rolling Kendall tau / MAE are taken after
  N = 200, 500, 1,000 requests and set beside a predictor trained offline on the
  profile's other prompts (the same prompts are never in both). A refit is waited
  for before the next request, so the figures do not depend on this machine's speed.
* ``live``: the real gateway (sjf-aged) in front of a real worker, replaying the
  same prompts with Poisson arrivals, online learning on vs off; mean end-to-end
  latency per window of requests and the gateway's rolling tau gauge.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lengthwise.common.files import write_json_report
from lengthwise.common.paths import REPO_ROOT
from lengthwise.common.rank import finite_or_none, kendall_tau

CHECKPOINTS = (200, 500, 1000)
BENCH_SALT = "lengthwise-served-model-split"  # the served-model evaluation's split


@dataclass(frozen=True)
class StreamItem:
    text: str
    actual: float
    prompt_tokens: int = 0


def build_stream(profile: pd.DataFrame, n: int, seed: int) -> list[StreamItem]:
    """``n`` requests over the profile's rows; a prompt recurs only after all were used,
    each time with another of its sampled lengths (as a real stream repeats prompts)."""
    rng = random.Random(seed)
    inputs = profile["input_size"] if "input_size" in profile.columns else [0] * len(profile)
    rows = list(zip(profile["prompt_text"], profile["output_sizes"], inputs))
    out: list[StreamItem] = []
    while len(out) < n and rows:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in order[: n - len(out)]:
            text, sizes, prompt_tokens = rows[i]
            out.append(StreamItem(text, float(rng.choice(list(sizes))),
                                  0 if pd.isna(prompt_tokens) else int(prompt_tokens)))
    return out


#: the live bench's calibrated cost model of the local vLLM CPU worker
DEFAULT_COST_MODEL = REPO_ROOT / "reports" / "sim_calibration_cpu.json"


def simulated_window_latency(items: list[StreamItem], predictions: dict[str, np.ndarray],
                             cost_model: Path) -> dict:
    """Mean end-to-end latency of one window's requests arriving as a burst, replayed
    through the simulator (the gateway's own policy code, ``bench live``'s deployment:
    the bench worker's engine, its admission limit and aging) with each prediction
    source under ``sjf-aged``, and under ``fcfs`` for reference."""
    from server.policy import PolicyName
    from simulator.calibrate import load_request_overhead
    from simulator.fidelity import LiveSetup, sim_config
    from simulator.latency import load_cost_model
    from simulator.simulation import run_simulation
    from simulator.trace import SimRequest

    overhead = load_request_overhead(cost_model)
    setup = LiveSetup.bench_defaults(**({"overhead": overhead} if overhead else {}))
    latency = load_cost_model(cost_model)
    requests = [SimRequest(f"r{i}", 0.0, max(1, it.prompt_tokens), max(1, int(it.actual)))
                for i, it in enumerate(items)]

    def mean_e2e(policy: PolicyName, predicted: np.ndarray) -> float:
        result = run_simulation(requests, predicted.tolist(), sim_config(setup, policy), latency)
        return float(np.mean([r.completion_time - r.request.arrival_time for r in result.records
                              if r.completion_time is not None]))

    fcfs = mean_e2e(PolicyName.FCFS, np.zeros(len(items)))
    out: dict = {"fcfs_e2e_mean_s": fcfs}
    for name, predicted in predictions.items():
        e2e = mean_e2e(PolicyName.SJF_AGED, predicted)
        out[f"sjf_{name}_e2e_mean_s"] = e2e
        out[f"sjf_{name}_vs_fcfs"] = e2e / fcfs
    return out


def _window_figures(pred: np.ndarray, actual: np.ndarray,
                    expected: np.ndarray | None = None) -> dict:
    def tau(truth: np.ndarray) -> float | None:
        return finite_or_none(kendall_tau(pred, truth))

    out = {"kendall_tau": tau(actual),
           "mae_tokens": float(np.mean(np.abs(pred - actual))),
           "median_ratio": float(np.median(pred / np.maximum(actual, 1.0)))}
    if expected is not None:
        out["kendall_tau_vs_prompt_mean"] = tau(expected)
    return out


SOURCES = ("online", "cold_model_agnostic", "offline_trained_on_profile")


@dataclass
class _SeedRun:
    """One seeded stream through a fresh learner: every request's numbers, in order."""

    stream: list[StreamItem]
    predictions: dict[str, np.ndarray]
    actual: np.ndarray
    #: the prompt's mean over all its sampled lengths (what a prompt costs on average)
    expected: np.ndarray
    #: the prompt was already seen earlier in this stream
    repeat: np.ndarray
    learner: dict
    refit_seconds: list[float]


def _replay_seed(stream: list[StreamItem], model: str, cap: int | None, base, offline,
                 settings, prompt_means: dict[str, float]) -> _SeedRun:
    from server.online_learning import OnlineLearningPredictor

    learner = OnlineLearningPredictor(base, settings)
    texts = [s.text for s in stream]
    caps = [cap] * len(stream)
    cold = np.array([p.mean for p in base.predict_batch(texts, [model] * len(stream), caps)])
    offline_pred = np.array([p.mean for p in offline.predict_batch(texts, [model] * len(stream), caps)])
    served, refit_seconds, seen, repeat = [], [], set(), []
    for item in stream:
        pred = learner.predict(item.text, model, cap).mean
        served.append(pred)
        repeat.append(item.text in seen)
        seen.add(item.text)
        began = time.perf_counter()
        learner.observe(model, item.text, pred, item.actual, cap)
        # a refit is waited for, so the figures do not depend on this machine's speed
        learner.wait_for_refits(300)
        if time.perf_counter() - began > 0.05:
            refit_seconds.append(time.perf_counter() - began)
    return _SeedRun(stream, {"online": np.array(served), "cold_model_agnostic": cold,
                             "offline_trained_on_profile": offline_pred},
                    np.array([s.actual for s in stream]),
                    np.array([prompt_means[s.text] for s in stream]), np.array(repeat),
                    learner.status(model), refit_seconds)


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None]
    if not kept:
        return None, None
    return float(np.mean(kept)), float(np.std(kept))


def _checkpoint(runs: list[_SeedRun], lo: int, n: int, cost_model: Path | None) -> dict:
    """Figures over requests [lo, n) of every seed's stream: the mean over seeds, and the sd."""
    out: dict = {"window": [lo, n],
                 "repeated_prompt_share": float(np.mean([r.repeat[lo:n].mean() for r in runs]))}
    per_seed = [{src: _window_figures(r.predictions[src][lo:n], r.actual[lo:n], r.expected[lo:n])
                 for src in SOURCES} for r in runs]
    for src in SOURCES:
        figures: dict = {}
        for key in ("kendall_tau", "kendall_tau_vs_prompt_mean", "mae_tokens", "median_ratio"):
            figures[key], figures[f"{key}_sd"] = _mean_sd([f[src][key] for f in per_seed])
        out[src] = figures
    online_tau, offline_tau = out["online"]["kendall_tau"], out["offline_trained_on_profile"]["kendall_tau"]
    if online_tau is not None and offline_tau is not None:
        out["tau_gap_to_offline"] = offline_tau - online_tau
    if cost_model is not None:
        sims = [simulated_window_latency(
            r.stream[lo:n], {**{src: r.predictions[src][lo:n] for src in SOURCES},
                             "oracle": r.actual[lo:n]}, cost_model) for r in runs]
        latency: dict = {}
        for key in sims[0]:
            latency[key], sd = _mean_sd([sim[key] for sim in sims])
            if key.endswith("_vs_fcfs"):
                latency[f"{key}_sd"] = sd
        out["simulated_burst_latency"] = latency
    return out


def replay(profile_dir: Path, requests: int, window: int, seeds: Sequence[int],
           refit_every: int,
           castillo_source: Path | None = None,
           cost_model: Path | None = DEFAULT_COST_MODEL) -> dict:
    from predictor.api import CastilloLengthPredictor, load_default_predictor
    from predictor.loader import grouped_split
    from predictor.profiling.report import load_profile, profile_cap
    from predictor.profiling.served_eval import clean_profile, profile_params
    from predictor.train import TrainParams, train_length_model
    from server.online_learning import OnlineLearningSettings

    started = time.perf_counter()
    profile = load_profile(profile_dir)
    cap = profile_cap(profile)
    model = str(profile["model"].iloc[0])
    train_part, stream_part = grouped_split(profile, 0.5, BENCH_SALT)
    base = load_default_predictor(castillo_source)
    offline_rows = clean_profile(train_part, cap)
    offline = CastilloLengthPredictor(train_length_model(
        offline_rows, params=profile_params(TrainParams(), len(offline_rows))).model)
    settings = OnlineLearningSettings(refit_every=refit_every,
                                      min_observations=min(refit_every, 200), window=window, nice=0)
    prompt_means = {text: float(np.mean(list(sizes)))
                    for text, sizes in zip(stream_part["prompt_text"], stream_part["output_sizes"])}
    runs = [_replay_seed(build_stream(stream_part, requests, seed), model, cap, base, offline,
                         settings, prompt_means) for seed in seeds]
    if cost_model is not None and not cost_model.exists():
        cost_model = None
    total = len(runs[0].stream)
    checkpoints = {}
    for n in (*CHECKPOINTS, total):
        if n <= total and str(n) not in checkpoints:
            checkpoints[str(n)] = _checkpoint(runs, max(0, n - window), n, cost_model)
    refit_seconds = [t for r in runs for t in r.refit_seconds]
    return {
        "mode": "replay", "served_model": model, "max_tokens": cap, "requests": total,
        "window": window, "refit_every": refit_every, "seeds": list(seeds),
        "stream_prompts": len(stream_part),
        "stream_repeats_prompts": total > len(stream_part),
        "offline_training_prompts": len(train_part),
        "cold_start_window": _checkpoint(runs, 0, min(window, total), None)["online"],
        "checkpoints": checkpoints,
        "cost_model": str(cost_model) if cost_model is not None else None,
        "learner": [r.learner for r in runs],
        "refit_seconds_mean": float(np.mean(refit_seconds)) if refit_seconds else None,
        "seconds": round(time.perf_counter() - started, 1),
        "notes": ("each seed streams the profile's held-out half of prompts in its own order "
                  "through a fresh learner; actual = one sampled length of the prompt (what a "
                  "request meets), a prompt recurring with another of its samples once all were "
                  "used (repeated_prompt_share); figures over the last `window` requests before "
                  "each checkpoint, mean over seeds with the sd beside; kendall_tau_vs_prompt_mean "
                  "ranks against the prompt's mean over its samples (the expected length, free of "
                  "one sample's noise); the offline predictor was trained on the profile's other "
                  "half of prompts (grouped split); simulated_burst_latency replays each window as "
                  "one burst through the simulator (calibrated CPU cost model, bench live's engine "
                  "and admission), sjf-aged with each source's numbers and fcfs for reference"),
    }


def _gauge(text: str, name: str, model: str) -> float | None:
    match = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def live(profile_dir: Path, worker_url: str, requests: int, window: int,
         rate_per_s: float, max_tokens: int, seed: int, refit_every: int) -> dict:
    """Arms: online learning off, then on; same prompts, same arrivals, gateway sjf-aged."""
    import httpx

    from lengthwise.bench.gateway_process import GatewayProcess
    from lengthwise.bench.live import Workload, arrival_offsets, run_arm
    from lengthwise.worker.process import free_port
    from predictor.profiling.report import load_profile

    profile = load_profile(profile_dir)
    model = str(profile["model"].iloc[0])
    stream = build_stream(profile, requests, seed)
    workload = Workload(num_requests=len(stream), rate_per_s=rate_per_s, max_tokens=max_tokens,
                        seed=seed)
    offsets = arrival_offsets(workload)
    bodies = [{"model": model, "messages": [{"role": "user", "content": s.text}],
               "max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.8, "stream": True,
               "stream_options": {"include_usage": True}} for s in stream]
    arms = {}
    for arm, enabled in (("online_off", False), ("online_on", True)):
        with tempfile.TemporaryDirectory() as tmp:
            settings = {"policy": "sjf-aged", "queue_capacity": max(1024, len(stream)),
                        "request_log_path": str(Path(tmp) / "requests.jsonl"),
                        "online_learning": enabled, "online_refit_every": refit_every,
                        "online_min_observations": max(20, refit_every),
                        "online_window": window}
            with GatewayProcess(worker_url, free_port(), settings, Path(tmp)) as gw:
                results = asyncio.run(run_arm(gw.url, bodies, offsets))
                metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        windows = []
        for lo in range(0, len(results), window):
            part = [r for r in results[lo:lo + window] if r.ok]
            pred = np.array([r.predicted_tokens or 0.0 for r in part])
            actual = np.array([float(r.completion_tokens) for r in part])
            windows.append({"requests": [lo, lo + window], "ok": len(part),
                            "e2e_mean_s": float(np.mean([r.e2e_s for r in part])) if part else None,
                            **(_window_figures(pred, actual) if len(part) > 2 else {})})
        arms[arm] = {"windows": windows,
                     "gateway_rolling_tau": _gauge(metrics, "lengthwise_predictor_rolling_kendall_tau", model),
                     "gateway_error_ratio": _gauge(metrics, "lengthwise_predictor_rolling_error_ratio", model)}
    return {"mode": "live", "served_model": model, "worker": worker_url, "requests": len(stream),
            "rate_per_s": rate_per_s, "max_tokens": max_tokens, "window": window, "arms": arms}


def write_report(report: dict, output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)

    existing = json.loads(output.read_text()) if output.exists() else {}
    existing[report["mode"]] = report
    write_json_report(output, existing)
    return output
