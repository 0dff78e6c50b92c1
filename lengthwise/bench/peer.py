"""The gateway against its own worker, driven by vLLM's benchmark client (``vllm bench serve``).

One vLLM worker, two ways to reach it: through ``lengthwise serve`` (the gateway, default
settings) and directly. ``vllm bench serve`` (the field's standard client, run in-process
through ``vllm.benchmarks.serve``) sends the same ShareGPT-form dataset to each in turn,
A B then B A, for several rounds, in each scenario: a burst (every request at once) and
Poisson arrivals. Decoding is greedy so the arms decode the same answers as far as the
engine's numerics allow, and every request's ``max_tokens`` is its reference answer's
length, so caps are heterogeneous, as real clients send them.

The prompts are real Dolly and Alpaca prompts whose CASTILLO rows sit in the served
predictor's held-out prompt group (``predictor.artifact.HOLDOUT_SALT``): the predictor
never trained on them (checked against the artifact's ``train_prompt_ids.txt``).

The report pools each arm's requests over the rounds (figures of the pooled requests;
throughput = all output tokens over all arm time) and gives each round's gateway/direct
ratio beside the pooled ratio, so the spread is visible.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lengthwise.bench.settings import PeerScenario, PeerSettings
from lengthwise.common.files import write_json_report
from lengthwise.common.paths import shared_dir

#: The figures a scenario is judged by, and their targets, as gateway / direct.
TARGETS = {
    "burst": {"output_throughput": (">=", 0.97), "e2e_mean": ("<=", 0.85),
              "e2e_p99": ("<=", 1.10)},
    "poisson": {"e2e_mean": ("<=", 1.02), "ttft_mean_minus_direct_ms": ("<=", 15.0)},
}


@dataclass
class ArmRun:
    """One ``vllm bench serve`` run of one arm."""

    arm: str
    round: int
    summary: dict[str, Any]
    latencies_s: list[float]
    ttfts_s: list[float]
    output_lens: list[int]
    failed: int
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)


# --- prompts -------------------------------------------------------------------------


def held_out_prompts(n: int, seed: int, trained_prompt_ids: set[str] | None,
                     folder: Path | None = None, castillo: Path | None = None,
                     ) -> list[tuple[str, str]]:
    """``n`` (prompt, reference answer) pairs from the shared Dolly and Alpaca files whose
    CASTILLO prompt is in the default artifact's held-out group (and, when given, not
    among ``trained_prompt_ids``)."""
    import pandas as pd

    from predictor.artifact import HOLDOUT_FRACTION, HOLDOUT_SALT
    from predictor.loader import prompt_group_mask

    folder = folder or shared_dir() / "prompts"
    castillo = castillo or shared_dir() / "castillo"
    frames = [pd.read_parquet(path, columns=["prompt_id", "dataset", "prompt_text"])
              for path in sorted(castillo.glob("*.parquet"))]
    rows = pd.concat(frames).drop_duplicates("prompt_id")
    rows = rows[rows["dataset"].isin(["Alpaca", "DollyDataset"])]
    held = prompt_group_mask(rows["prompt_id"], HOLDOUT_FRACTION, HOLDOUT_SALT)
    by_text = {text.strip(): pid for text, pid in
               zip(rows["prompt_text"][held], rows["prompt_id"][held])}
    chosen: dict[str, tuple[str, str]] = {}
    for name in sorted(folder.glob("*.json")):
        for item in json.loads(name.read_text(encoding="utf-8")):
            extra = item.get("context") or item.get("input") or ""
            instruction = item["instruction"].strip()
            reference = item.get("response") or item.get("output") or ""
            for text in (instruction, f"{instruction}\n\n{extra}".strip()):
                pid = by_text.get(text)
                if pid is not None and reference.strip():
                    if trained_prompt_ids is not None and pid in trained_prompt_ids:
                        raise RuntimeError(f"prompt {pid} is held out by its group but the "
                                           "served artifact trained on it")
                    chosen.setdefault(pid, (text, reference))
                    break
    items = [chosen[pid] for pid in sorted(chosen)]
    if len(items) < n:
        raise ValueError(f"only {len(items)} held-out prompts with references; asked {n}")
    random.Random(seed).shuffle(items)
    return items[:n]


def write_sharegpt(items: Sequence[tuple[str, str]], path: Path) -> Path:
    """The ShareGPT layout ``vllm bench serve --dataset-name sharegpt`` reads; the
    reference answer's token count becomes each request's ``max_tokens``."""
    data = [{"id": f"peer-{i}", "conversations": [{"from": "human", "value": prompt},
                                                   {"from": "gpt", "value": reference}]}
            for i, (prompt, reference) in enumerate(items)]
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- one vllm bench serve run ---------------------------------------------------------


def vllm_bench_serve(base_url: str, dataset: Path, model: str, tokenizer: str,
                     scenario: PeerScenario, seed: int, log_path: Path) -> dict[str, Any]:
    """``vllm bench serve`` (openai-chat, streaming, greedy) against ``base_url``; returns
    its result with per-request fields. Its console output goes to ``log_path``."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", base_url, "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "sharegpt", "--dataset-path", str(dataset),
        "--num-prompts", str(scenario.num_prompts),
        "--request-rate", str(scenario.request_rate), "--seed", str(seed),
        "--temperature", "0", "--disable-tqdm", "--save-detailed",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
    ])
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = main(args)
    log_path.write_text(buffer.getvalue(), encoding="utf-8")
    return result


def arm_run(arm: str, round_: int, result: dict[str, Any]) -> ArmRun:
    errors = result.get("errors") or []
    ok = [i for i, e in enumerate(errors) if not e] if errors else list(
        range(len(result.get("latencies", []))))
    latencies = [result["latencies"][i] for i in ok]
    ttfts = [result["ttfts"][i] for i in ok]
    lens = [result["output_lens"][i] for i in ok]
    summary = {k: v for k, v in result.items()
               if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return ArmRun(arm, round_, summary, latencies, ttfts, lens,
                  int(result.get("failed", 0)), float(result["duration"]))


# --- figures --------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def figures(runs: Sequence[ArmRun]) -> dict[str, float]:
    """One arm's figures over the requests of ``runs`` (pooled)."""
    lat = [x for r in runs for x in r.latencies_s]
    ttft = [x for r in runs for x in r.ttfts_s]
    tokens = sum(sum(r.output_lens) for r in runs)
    duration = sum(r.duration_s for r in runs)
    return {
        "requests_ok": len(lat), "requests_failed": sum(r.failed for r in runs),
        "output_tokens": tokens, "duration_s": duration,
        "preemptions": sum(r.extra.get("preemptions", 0.0) for r in runs),
        "output_throughput": tokens / duration if duration else float("nan"),
        "e2e_mean": statistics.fmean(lat) if lat else float("nan"),
        "e2e_p50": _pct(lat, 0.5), "e2e_p90": _pct(lat, 0.9), "e2e_p99": _pct(lat, 0.99),
        "ttft_mean": statistics.fmean(ttft) if ttft else float("nan"),
        "ttft_p50": _pct(ttft, 0.5), "ttft_p99": _pct(ttft, 0.99),
    }


def compare(gateway: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    out = {f"{k}": gateway[k] / direct[k] for k in
           ("output_throughput", "e2e_mean", "e2e_p50", "e2e_p90", "e2e_p99", "ttft_mean",
            "ttft_p50", "ttft_p99") if direct[k]}
    out["ttft_mean_minus_direct_ms"] = 1000 * (gateway["ttft_mean"] - direct["ttft_mean"])
    out["ttft_p50_minus_direct_ms"] = 1000 * (gateway["ttft_p50"] - direct["ttft_p50"])
    return out


def judge(scenario: str, ratios: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (op, bound) in TARGETS.get(scenario, {}).items():
        value = ratios.get(key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        out[key] = {"value": value, "target": f"{op} {bound}", "met": met}
    return out


def scenario_report(name: str, runs: Sequence[ArmRun]) -> dict[str, Any]:
    rounds = sorted({r.round for r in runs})
    by = {arm: [r for r in runs if r.arm == arm] for arm in ("gateway", "direct")}
    pooled = {arm: figures(rs) for arm, rs in by.items()}
    ratios = compare(pooled["gateway"], pooled["direct"])
    per_round = []
    for k in rounds:
        g = figures([r for r in by["gateway"] if r.round == k])
        d = figures([r for r in by["direct"] if r.round == k])
        per_round.append({"round": k, "gateway": g, "direct": d, "ratios": compare(g, d)})
    spread = {key: {"min": min(p["ratios"][key] for p in per_round),
                    "max": max(p["ratios"][key] for p in per_round)}
              for key in ratios}
    return {"pooled": pooled, "ratios": ratios, "ratio_spread_over_rounds": spread,
            "targets": judge(name, ratios), "rounds": per_round}


# --- the run --------------------------------------------------------------------------


def preemptions(worker_url: str) -> float:
    """The worker's cumulative preemption count (vLLM's ``vllm:num_preemptions_total``)."""
    from server.engine_stats import parse_samples

    text = httpx.get(f"{worker_url}/metrics", timeout=10).text
    return parse_samples(text, {"vllm:num_preemptions_total"}).get(
        "vllm:num_preemptions_total", 0.0)


def wait_idle(worker_url: str, timeout_s: float = 600.0) -> None:
    """Until the worker reports nothing running or waiting (the previous arm's tail)."""
    from server.engine_stats import EngineStats

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stats = EngineStats.from_vllm_scrape(
                httpx.get(f"{worker_url}/metrics", timeout=10).text)
            if not stats.num_running and not stats.num_waiting:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{worker_url} still busy after {timeout_s:.0f} s")


def run_peer(gateway_url: str, worker_url: str, model: str, tokenizer: str,
             items: Sequence[tuple[str, str]], settings: PeerSettings, workdir: Path,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """A B / B A rounds of every scenario; returns the report (without environment)."""
    dataset = write_sharegpt(items, workdir / "peer_sharegpt.json")
    targets = {"gateway": gateway_url, "direct": worker_url}
    # Fill the worker's prefix cache with every prompt once, so no arm finds it colder.
    warm = PeerScenario("warm-up", float("inf"), len(items))
    wait_idle(worker_url)
    vllm_bench_serve(worker_url, dataset, model, tokenizer, warm, settings.seed,
                     workdir / "warm-up.log")
    scenarios = {}
    for scenario in settings.scenarios:
        runs: list[ArmRun] = []
        for k in range(settings.rounds):
            order = ("gateway", "direct") if k % 2 == 0 else ("direct", "gateway")
            for arm in order:
                wait_idle(worker_url)
                before = preemptions(worker_url)
                result = vllm_bench_serve(targets[arm], dataset, model, tokenizer, scenario,
                                          settings.seed,
                                          workdir / f"{scenario.name}-{k}-{arm}.log")
                run = arm_run(arm, k, result)
                run.extra["preemptions"] = preemptions(worker_url) - before
                runs.append(run)
                f = figures([run])
                log(f"{scenario.name} round {k} {arm}: {f['requests_ok']} ok, "
                    f"{f['requests_failed']} failed, {f['output_throughput']:.1f} tok/s, "
                    f"e2e mean {f['e2e_mean']:.2f} s p99 {f['e2e_p99']:.2f} s, "
                    f"ttft mean {1000 * f['ttft_mean']:.0f} ms, "
                    f"{f['preemptions']:.0f} preemptions")
        scenarios[scenario.name] = scenario_report(scenario.name, runs)
        scenarios[scenario.name]["settings"] = asdict(scenario)
        scenarios[scenario.name]["runs"] = [asdict(r) for r in runs]
        ratios = scenarios[scenario.name]["ratios"]
        log(f"{scenario.name}: gateway/direct throughput {ratios['output_throughput']:.3f}, "
            f"e2e mean {ratios['e2e_mean']:.3f}, p99 {ratios['e2e_p99']:.3f}, ttft mean "
            f"{ratios['ttft_mean_minus_direct_ms']:+.0f} ms")
    return {"settings": {**asdict(settings), "prompts": len(items)},
            "scenarios": scenarios}


def measure(settings: PeerSettings, output: Path, *, worker: str | None = None,
            model: str | None = None, tokenizer: str | None = None,
            gateway_overrides: dict[str, Any] | None = None,
            worker_kv_blocks: int | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark: the gateway (``lengthwise serve``, defaults plus
    ``gateway_overrides``) in front of ``worker``, of its own local worker, or (with
    ``worker_kv_blocks``) of a local worker with that few KV blocks; writes ``output``
    (JSON, plot, the gateway's request log) and returns the report."""
    import contextlib
    import tempfile

    from lengthwise.bench.gateway_process import GatewayProcess
    from lengthwise.worker.process import free_port, served_model, worker_for
    from predictor.artifact import default_artifact_dir

    trained = default_artifact_dir() / "train_prompt_ids.txt"
    items = held_out_prompts(max(s.num_prompts for s in settings.scenarios), settings.seed,
                             set(trained.read_text().split()) if trained.exists() else None)
    if tokenizer is None:
        from lengthwise.worker.local_model import prepare_local_model

        tokenizer = str(prepare_local_model().path)
    overrides = dict(gateway_overrides or {})
    with contextlib.ExitStack() as stack:
        if worker_kv_blocks is not None:
            worker, _ = stack.enter_context(worker_for(
                None, None, say=log, num_gpu_blocks=worker_kv_blocks))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="lengthwise-peer-")))
        worker_port = None if worker else free_port()
        settings_file = {"request_log_path": str(workdir / "requests.jsonl"), **overrides}
        log("starting the gateway" + ("" if worker else " and its local worker"))
        with GatewayProcess(worker, free_port(), settings_file, workdir,
                            worker_port=worker_port, startup_timeout_s=600) as gw:
            worker_url = worker.rstrip("/") if worker else f"http://127.0.0.1:{worker_port}"
            name = model or served_model(worker_url)
            report = run_peer(gw.url, worker_url, name, tokenizer, items, settings, workdir,
                              log=log)
        report["environment"] = {
            "gateway": "lengthwise serve" + (f" --worker {worker}" if worker else ""),
            "worker_kv_blocks": worker_kv_blocks, "gateway_settings_over_defaults": overrides,
            "worker": worker_url, "model": name, "measured_at_unix": time.time()}
        output.parent.mkdir(parents=True, exist_ok=True)
        log_file = workdir / "requests.jsonl"
        output.with_suffix(".requests.jsonl").write_bytes(
            log_file.read_bytes() if log_file.exists() else b"")
    write(report, output)
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["output_throughput", "e2e_mean", "e2e_p50", "e2e_p99", "ttft_mean"]
    names = list(report["scenarios"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        sc = report["scenarios"][name]
        ax.bar(range(len(keys)), [sc["ratios"][k] for k in keys], color="#4c72b0")
        for i, k in enumerate(keys):
            ax.scatter([i] * len(sc["rounds"]), [p["ratios"][k] for p in sc["rounds"]],
                       color="black", s=12, zorder=3)
        ax.axhline(1.0, color="grey", lw=1)
        ax.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=8)
        ax.set_title(f"{name}: gateway / direct (dots: rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict[str, Any], output: Path) -> None:
    write_json_report(output, report)
    plot(report, output.with_suffix(".png"))
