"""``lengthwise bench ...``: every benchmark and experiment, in one place.

Conventions shared by every command (and by ``simulate`` and ``profile``): ``--worker URL``
is a running vLLM worker's base URL (without it, commands that need one start a local vLLM
CPU worker for the run and stop it after); ``--output PATH`` is the JSON report, by default
``reports/<name>.json`` under the current directory; a plot, where there is one, goes
beside it as .png (``--plot/--no-plot``). Inputs that name committed files (``--cost-model``,
``--from-samples``) are found from the project root when not found from the current
directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lengthwise.bench.settings import (
    PEER_POISSON_RATE,
    PEER_REQUESTS,
    CostConfig,
    PeerScenario,
    PeerSettings,
    SoakSettings,
    Workload,
)
from lengthwise.common.cpu_worker import CPU_BLOCK_SIZE
from lengthwise.common.edt_params import DEFAULT_N as EDT_DEFAULT_N
from lengthwise.common.paths import project_file, report_path
from simulator.latency import RTX_PRO_6000_KV_TOKENS

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

Worker = Annotated[str | None, typer.Option(
    "--worker", help="A running vLLM worker's base URL; default: start a local one.")]
Model = Annotated[str | None, typer.Option(help="Served model name (default: the worker's).")]


Output = Annotated[Path, typer.Option("--output", help="JSON report.")]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _echo_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2)[:4000])


# --- live gateway benchmarks ---------------------------------------------------------


@app.command()
def live(
    worker: Worker = None,
    model: Model = None,
    requests: int = typer.Option(Workload.num_requests, help="Requests per arm."),
    arrivals: str = typer.Option(Workload.arrivals, help="poisson or burst."),
    rate: float = typer.Option(Workload.rate_per_s, help="Poisson arrival rate (requests/s)."),
    max_tokens: int = typer.Option(Workload.max_tokens, help="max_tokens of every request."),
    max_sequences: int | None = typer.Option(
        None, help="A hand-set gateway cap per worker (default: the gateway's admission)."),
    sjf_policy: str = typer.Option(Workload.sjf_policy,
                                   help="Policy of the sjf arm: sjf or sjf-aged."),
    aging_s_per_token: float = typer.Option(Workload.aging_s_per_token,
                                            help="sjf-aged aging rate."),
    seed: int = typer.Option(Workload.seed),
    output: Output = report_path("live_bench.json"),
) -> None:
    """Plain vLLM vs gateway fcfs vs gateway sjf on real prompts, one run of each arm."""
    from lengthwise.bench.live import run_live_bench
    from lengthwise.worker.process import worker_for

    w = Workload(num_requests=requests, arrivals=arrivals, rate_per_s=rate,
                 max_tokens=max_tokens, seed=seed, max_sequences_per_worker=max_sequences,
                 sjf_policy=sjf_policy, aging_s_per_token=aging_s_per_token)
    # Prefix caching off: every arm replays the same prompts, and a warm cache would
    # favour whichever arm runs later.
    with worker_for(worker, model, say=typer.echo, prefix_caching=False) as (url, name):
        report = run_live_bench(url, name, w, output, log=typer.echo)
    typer.echo(f"targets: {report['targets']}; wrote {output}")


@app.command()
def peer(
    worker: Annotated[str | None, typer.Option(
        "--worker", help="A running vLLM worker's base URL; default: start a local one "
        "(`lengthwise serve` with its own worker, as a user runs it). With one, the gateway "
        "is `lengthwise serve --worker URL`.")] = None,
    model: Model = None,
    tokenizer: str | None = typer.Option(
        None, help="Tokenizer for vllm bench (default: the local SmolLM2 model folder)."),
    requests: int = typer.Option(PEER_REQUESTS, help="Requests per run."),
    rate: float = typer.Option(PEER_POISSON_RATE, help="Poisson scenario: requests per second."),
    scenarios: str = typer.Option("burst,poisson", help="Which scenarios to run."),
    rounds: int = typer.Option(PeerSettings.rounds, min=1, help="A B / B A rounds per scenario."),
    seed: int = typer.Option(PeerSettings.seed),
    gateway_setting: list[str] = typer.Option(
        [], "--gateway-setting", help="A gateway setting NAME=VALUE (JSON value) on top "
        "of the defaults, e.g. kv_budget=0.8; repeat for several."),
    worker_kv_blocks: int | None = typer.Option(
        None, help="Memory-bound scenario: start a local worker with this many KV blocks "
        f"({CPU_BLOCK_SIZE} tokens each on CPU) and put `lengthwise serve --worker URL` in front of it "
        "(its slots then learned, as for any remote worker)."),
    output: Output = report_path("peer.json"),
) -> None:
    """The gateway vs its own worker directly, driven by `vllm bench serve`: burst and
    Poisson, A B / B A rounds, greedy decoding; writes a JSON report and a plot."""
    from lengthwise.bench.peer import measure

    chosen = {"burst": PeerScenario("burst", float("inf"), requests),
              "poisson": PeerScenario("poisson", rate, requests)}
    names = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = set(names) - set(chosen)
    if unknown:
        raise typer.BadParameter(f"unknown scenarios {sorted(unknown)}; use burst, poisson")
    if worker_kv_blocks is not None and worker:
        raise typer.BadParameter("--worker-kv-blocks starts its own worker; drop --worker")
    overrides = {}
    for item in gateway_setting:
        name, _, value = item.partition("=")
        overrides[name.strip()] = json.loads(value)
    settings = PeerSettings(tuple(chosen[n] for n in names), rounds, seed)
    report = measure(settings, output, worker=worker, model=model, tokenizer=tokenizer,
                     gateway_overrides=overrides, worker_kv_blocks=worker_kv_blocks,
                     log=typer.echo)
    typer.echo(json.dumps({k: v["targets"] for k, v in report["scenarios"].items()},
                          indent=2))
    typer.echo(f"wrote {output}")


@app.command()
def overhead(
    worker: Worker = None,
    model: Model = None,
    samples: int = typer.Option(200, help="Request rounds (one request to each target)."),
    proxy_floor: bool = typer.Option(True, help="Also measure a minimal byte-forwarding proxy."),
    output: Output = report_path("gateway_overhead.json"),
) -> None:
    """Latency the gateway (and a bare proxy) adds per request at low load."""
    from lengthwise.bench.overhead import measure_overhead
    from lengthwise.worker.process import worker_for

    with worker_for(worker, model, say=typer.echo) as (url, name):
        measure_overhead(url, name, output, samples, proxy_floor, log=typer.echo)


@app.command()
def soak(
    worker: Worker = None,
    model: Model = None,
    duration_s: float = typer.Option(SoakSettings.duration_s, help="Soak length in seconds."),
    load_fraction: float = typer.Option(SoakSettings.load_fraction,
                                        help="Offered load as a fraction of capacity."),
    calibrate_s: float = typer.Option(SoakSettings.calibrate_s,
                                      help="Capacity calibration length."),
    max_tokens: int = typer.Option(SoakSettings.max_tokens, help="max_tokens of every request."),
    max_sequences: int | None = typer.Option(
        None, help="A hand-set gateway cap per worker (default: the gateway's admission)."),
    output: Output = report_path("soak.json"),
) -> None:
    """The gateway at 80% of capacity for a long time: errors and the RSS slope."""
    from lengthwise.bench.soak import run_soak
    from lengthwise.worker.process import worker_for

    s = SoakSettings(duration_s=duration_s, load_fraction=load_fraction,
                     calibrate_s=calibrate_s, max_tokens=max_tokens,
                     max_sequences_per_worker=max_sequences)
    with worker_for(worker, model, say=typer.echo) as (url, name):
        run_soak(url, name, s, output, log=typer.echo)


@app.command()
def online(
    profile: Path = typer.Argument(..., help="Profile run folder of the served model."),
    mode: str = typer.Option("replay", help="replay (no worker) or live (gateway + worker)."),
    worker: Annotated[str | None, typer.Option(
        "--worker", help="A running vLLM worker's base URL; default: start a local one. "
        "Live mode only.")] = None,
    requests: int = typer.Option(1000, min=10),
    window: int = typer.Option(200, min=10, help="Requests per rolling window."),
    refit_every: int = typer.Option(100, min=10),
    rate: float = typer.Option(1.0, help="live: Poisson arrivals per second."),
    max_tokens: int = typer.Option(256, help="live: max_tokens of every request."),
    seed: int = typer.Option(0),
    seeds: int = typer.Option(5, min=1, help="replay: streams seed, seed+1, ..."),
    output: Output = report_path("online_learning_bench.json"),
) -> None:
    """Online learning from a cold start: rolling tau (and sjf latency, live)."""
    from lengthwise.bench.online_learning import live as live_run
    from lengthwise.bench.online_learning import replay, write_report
    from lengthwise.worker.process import worker_for

    if mode == "replay" and worker:
        raise typer.BadParameter("--worker is for --mode live; replay needs no worker")
    if mode == "replay":
        report = replay(profile, requests, window, range(seed, seed + seeds), refit_every)
    elif mode == "live":
        with worker_for(worker, None, say=typer.echo) as (url, _name):
            report = live_run(profile, url, requests, window, rate, max_tokens, seed,
                              refit_every)
    else:
        raise typer.BadParameter("--mode is replay or live")
    path = write_report(report, output)
    _echo_json({k: v for k, v in report.items() if k != "arms"})
    typer.echo(f"wrote {path}")


# --- EDT sampling --------------------------------------------------------------------


@app.command("edt-quality")
def edt_quality(
    worker: Worker = None,
    model: Model = None,
    per_category: int = typer.Option(13, help="Prompts per Dolly category (3 categories)."),
    samples: int = typer.Option(4, help="Samples per prompt (k >= 2 for Self-BLEU)."),
    max_tokens: int = typer.Option(200),
    concurrency: int = typer.Option(48, help="Requests in flight (each asks for n=samples)."),
    fixed: str = typer.Option("0.3,0.7,1.0,1.3", help="Fixed temperatures."),
    edt_t0: str = typer.Option("1.0,1.3", help="EDT base temperatures T0."),
    edt_theta: str = typer.Option("0.5,1.5", help="EDT theta values."),
    edt_n: float = typer.Option(EDT_DEFAULT_N, help="EDT base N."),
    seed: int = typer.Option(0),
    output: Output = report_path("edt_quality.json"),
    plot: bool = typer.Option(True, help="Write the PNG plot beside --output."),
) -> None:
    """Quality (ROUGE-L), diversity (Self-BLEU) and length of EDT vs fixed temperature."""
    from lengthwise.bench.edt_quality import build_grid, evaluate, write_report
    from lengthwise.worker.process import worker_for

    if samples < 2:
        raise typer.BadParameter("--samples must be at least 2 for Self-BLEU")
    grid = build_grid(_floats(fixed), _floats(edt_t0), _floats(edt_theta), edt_n)
    png_path = output.with_suffix(".png") if plot else None
    with worker_for(worker, model, say=typer.echo) as (url, served):
        output.parent.mkdir(parents=True, exist_ok=True)
        report = evaluate(url, served, grid, per_category, samples, max_tokens, concurrency,
                          seed, progress=typer.echo, partial_path=output)
    write_report(report, output, png_path)
    typer.echo(f"best fixed: {report['best_fixed']}; best EDT: {report['best_edt']}; "
               f"Pareto front: {', '.join(report['pareto_front'])}")
    typer.echo(f"wrote {output}" + (f" and {png_path}" if png_path else ""))


@app.command("edt-cost")
def edt_cost(
    worker: Worker = None,
    model: Model = None,
    requests: int = typer.Option(CostConfig.requests, help="Requests per run."),
    max_tokens: int = typer.Option(CostConfig.max_tokens, help="Tokens per request (ignore_eos)."),
    concurrency: int = typer.Option(CostConfig.concurrency),
    rounds: int = typer.Option(CostConfig.rounds, help="ABBA rounds (fixed, EDT, EDT, fixed)."),
    theta: float = typer.Option(CostConfig.theta),
    output: Output = report_path("edt_cost.json"),
) -> None:
    """Tokens/s with EDT on every request vs the same requests at fixed temperature."""
    from lengthwise.bench.edt_cost import run_cost_benchmark
    from lengthwise.common.files import write_json_report
    from lengthwise.worker.process import worker_for

    cfg = CostConfig(requests=requests, max_tokens=max_tokens, concurrency=concurrency,
                     rounds=rounds, theta=theta)
    with worker_for(worker, model, say=typer.echo) as (url, served):
        report = run_cost_benchmark(url, served, cfg, progress=typer.echo)
    write_json_report(output, report)
    typer.echo(f"fixed {report['fixed_tok_s']} tok/s, EDT {report['edt_tok_s']} tok/s, "
               f"ratio {report['ratio']} (target >= {report['target_ratio']}); wrote {output}")


# --- ordering: what any predictor could buy ----------------------------------------


@app.command()
def ceiling(
    worker: Annotated[str | None, typer.Option(
        "--worker", help="A running vLLM worker's base URL; default: start a local one. "
        "Answers are sampled from it (not with --castillo or --from-samples).")] = None,
    requests: int = typer.Option(96, help="Prompts in the burst."),
    max_tokens: int = typer.Option(256),
    samples: int = typer.Option(6, help="Answers sampled per prompt (>= 2)."),
    concurrency: int = typer.Option(16),
    admissions: str = typer.Option("16,8,4", help="Gateway admission limits to replay."),
    cost_model: Path = typer.Option(Path("reports/sim_calibration_cpu.json"),
                                    help="The worker's calibrated cost model (a committed "
                                    "file: found from the project root too)."),
    castillo: str | None = typer.Option(
        None, help="Rank CASTILLO's held-out answers of this model (e.g. Llama-3.1-8B) on "
        "the simulated GPU instead of sampling a worker."),
    from_samples: Path | None = typer.Option(
        None, help="Reuse the answers of an earlier report instead of sampling."),
    output: Output = report_path("sjf_ceiling.json"),
) -> None:
    """The best mean E2E any request-only predictor could reach on the bench's bursts."""
    import contextlib

    from lengthwise.bench.ceiling_samples import run_ceiling
    from lengthwise.worker.process import worker_for

    if samples < 2:
        raise typer.BadParameter("--samples must be at least 2 (the prompt mean leaves one out)")
    if worker and (castillo or from_samples):
        raise typer.BadParameter("--worker samples answers; --castillo and --from-samples "
                                 "bring their own")
    cost_model = project_file(cost_model)
    from_samples = project_file(from_samples) if from_samples else None
    for given in (cost_model, from_samples):
        if given is not None and not given.is_file():
            raise typer.BadParameter(f"{given}: no such file (here or in the project)")
    sampling = not (castillo or from_samples)
    with (worker_for(worker, None, say=typer.echo) if sampling
          else contextlib.nullcontext((None, None))) as (url, _served):
        run_ceiling(worker=url, output=output, requests=requests, max_tokens=max_tokens,
                    samples_per_prompt=samples, concurrency=concurrency,
                    admissions=_ints(admissions), cost_model=cost_model, castillo=castillo,
                    from_samples=from_samples)
    typer.echo(f"wrote {output}")


# --- simulator -----------------------------------------------------------------------


@app.command("sim-speed")
def sim_speed(
    trace: Path | None = typer.Option(None, help="Default: the shared azure2023_conv.csv."),
    cost_model: Path | None = typer.Option(None, help="Default: the RTX PRO 6000 tables."),
    num_layers: int = typer.Option(32),
    kv_cache_tokens: int = typer.Option(RTX_PRO_6000_KV_TOKENS),
    output: Output = report_path("sim_speed.json"),
) -> None:
    """Replay the whole Azure 2023 conv trace on one simulated worker: wall and CPU time."""
    from lengthwise.bench.sim_speed import speed_benchmark
    from lengthwise.common.files import write_json_report
    from lengthwise.common.paths import shared_dir
    from simulator.latency import RTX_PRO_6000_TABLES, load_cost_model
    from simulator.replica import EngineConfig

    trace = trace or shared_dir() / "traces" / "azure2023_conv.csv"
    latency = load_cost_model(cost_model or shared_dir() / RTX_PRO_6000_TABLES, num_layers)
    engine = EngineConfig(kv_cache_tokens=kv_cache_tokens)
    report = speed_benchmark(trace, latency, engine)
    report["engine"] = {name: getattr(engine, name) for name in (
        "max_num_seqs", "max_num_batched_tokens", "kv_cache_tokens", "block_size")}
    write_json_report(output, report)
    _echo_json({k: v for k, v in report.items() if k != "summary"})


# --- predictor -----------------------------------------------------------------------


@app.command()
def ablation(
    data: Path | None = typer.Option(None, help="CASTILLO file or folder (default: shared)."),
    minilm: bool = typer.Option(True, help="Include the MiniLM feature set ('embeddings' extra)."),
    latency_requests: int = typer.Option(300),
    output: Output = report_path("predictor_ablation.json"),
) -> None:
    """What each feature group and mean objective buys (tau, MAE, mean bias per corpus,
    latency), out of fold on the validation folds; the test split is never read."""
    from lengthwise.bench.ablation import run_ablation

    report = run_ablation(data, include_minilm=minilm, latency_requests=latency_requests,
                          write_to=output)
    _echo_json(report["summary"])


@app.command("second-stage")
def second_stage(
    data: Path | None = typer.Option(None, help="CASTILLO file or folder (default: shared)."),
    artifact: Path | None = typer.Option(None, help="First-stage artifact with a trained "
                                                    "second_stage/ (default: the default one)."),
    latency_requests: int = typer.Option(300),
    output: Output = report_path("predictor_second_stage.json"),
) -> None:
    """The optional second stage (MiniLM + LightGBM) vs the first on the test split, and its
    cost per batch of queued requests (batches of 1, 8, 32)."""
    from lengthwise.bench.second_stage import run_second_stage_study
    from lengthwise.common.files import write_json_report

    report = run_second_stage_study(data, artifact, latency_requests)
    write_json_report(output, report)
    _echo_json({"balanced": {k: report[k]["balanced"] for k in ("first_stage", "second_stage")},
                "batch_cost": report["batch_cost"]})
