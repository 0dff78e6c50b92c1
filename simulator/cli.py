"""``lengthwise simulate …``: replay a trace through the simulated gateway and engines.

``lengthwise simulate TRACE [options]`` runs one simulation (``run`` is the
default subcommand; the work is in :mod:`simulator.runner`); ``regimes`` draws the
regime map; ``fidelity-vllm`` replays a real vLLM run on its GPU's operator tables;
``calibrate`` fits a step-time model to a live vLLM worker; ``fit-cost-model`` fits
the linear model to an operator table; ``fidelity`` replays a live run's gateway
request logs and compares latencies.
"""

from __future__ import annotations

import json
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from lengthwise.common.cpu_worker import LIVE_BENCH_TEMPERATURE, LIVE_BENCH_TOP_P
from lengthwise.common.paths import report_path
from server.policy import PointEstimate, PolicyConfig, PolicyName

from .latency import RTX_4090_KV_TOKENS, RTX_PRO_6000_KV_TOKENS
from .predictions import PredictionSource
from .replica import EngineConfig
from .runner import (
    AdmissionMode,
    EngineOptions,
    EngineQueueChoice,
    GatewayOptions,
    PredictionCache,
    RunError,
    WorkloadOptions,
    parse_arms,
    run_load_sweep,
)


class _DefaultRunGroup(TyperGroup):
    """Makes ``lengthwise simulate TRACE …`` mean ``lengthwise simulate run TRACE …``."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(no_args_is_help=True, add_completion=False, cls=_DefaultRunGroup, help=__doc__)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"expected comma-separated numbers, got {text!r}")
        raise


_ENGINE = "Engine (vLLM arguments and the GPU's cost model)"
_WORKLOAD = "Workload"
_GATEWAY = "Gateway (policy, predictions, admission)"
_SWEEP = "Load sweep"
_DEFAULT_ENGINE = EngineConfig()
_DEFAULT_POLICY = PolicyConfig()


@app.command("run")
def run(
    trace: Annotated[str, typer.Argument(help="Trace file (.csv/.jsonl) or 'castillo'")],
    cost_model: Annotated[Path, typer.Option(
        help="Operator-table folder or linear-model .json", rich_help_panel=_ENGINE)],
    num_layers: Annotated[int | None, typer.Option(
        help="Decoder layers (default: known from the tables' model)", rich_help_panel=_ENGINE)] = None,
    step_overhead_ms: Annotated[float, typer.Option(
        help="Host time added to every step", rich_help_panel=_ENGINE)] = 0.0,
    max_num_seqs: Annotated[int, typer.Option(rich_help_panel=_ENGINE)] = _DEFAULT_ENGINE.max_num_seqs,
    max_num_batched_tokens: Annotated[int, typer.Option(
        rich_help_panel=_ENGINE)] = _DEFAULT_ENGINE.max_num_batched_tokens,
    kv_cache_tokens: Annotated[int, typer.Option(
        help="KV capacity per worker, tokens", rich_help_panel=_ENGINE)] = _DEFAULT_ENGINE.kv_cache_tokens,
    block_size: Annotated[int, typer.Option(rich_help_panel=_ENGINE)] = _DEFAULT_ENGINE.block_size,
    prefix_caching: Annotated[bool, typer.Option(
        rich_help_panel=_ENGINE)] = _DEFAULT_ENGINE.prefix_caching,
    async_scheduling: Annotated[bool, typer.Option(
        rich_help_panel=_ENGINE)] = _DEFAULT_ENGINE.async_scheduling,
    max_model_len: Annotated[int | None, typer.Option(
        help="Longest prompt+output accepted", rich_help_panel=_ENGINE)] = None,
    engines: Annotated[int, typer.Option(
        "--engines", help="Simulated vLLM engines (replicas) behind the gateway",
        rich_help_panel=_ENGINE)] = 1,
    workers_deprecated: Annotated[int | None, typer.Option(
        "--workers", hidden=True, help="Deprecated name of --engines")] = None,
    engine_queue: Annotated[EngineQueueChoice, typer.Option(
        help="vLLM --scheduling-policy; auto = fcfs for --policy fcfs, else priority",
        rich_help_panel=_ENGINE)] = EngineQueueChoice.AUTO,
    policy: Annotated[PolicyName, typer.Option(rich_help_panel=_GATEWAY)] = PolicyName.FCFS,
    predictions: Annotated[PredictionSource | None, typer.Option(
        help="Where ranked lengths come from (default: the trace's, else the trained "
             "predictor on its prompts); fcfs uses none", rich_help_panel=_GATEWAY)] = None,
    aging_s_per_token: Annotated[float, typer.Option(
        rich_help_panel=_GATEWAY)] = _DEFAULT_POLICY.aging_s_per_token,
    point_estimate: Annotated[PointEstimate, typer.Option(
        rich_help_panel=_GATEWAY)] = _DEFAULT_POLICY.point_estimate,
    noise_sigma: Annotated[float, typer.Option(
        help="oracle-noise: log-normal sigma", rich_help_panel=_GATEWAY)] = 0.5,
    admission: Annotated[AdmissionMode, typer.Option(
        help="unlimited: plain vLLM; gateway: the gateway's default (follows the engine)",
        rich_help_panel=_GATEWAY)] = AdmissionMode.UNLIMITED,
    admission_max_seqs: Annotated[int | None, typer.Option(
        help="Hand-set per-worker in-flight cap", rich_help_panel=_GATEWAY)] = None,
    admission_max_predicted_tokens: Annotated[float | None, typer.Option(
        help="Hand-set per-worker cap on predicted tokens in flight", rich_help_panel=_GATEWAY)] = None,
    queue_capacity: Annotated[int | None, typer.Option(
        help="Gateway queue bound", rich_help_panel=_GATEWAY)] = None,
    limit: Annotated[int | None, typer.Option(
        help="Use the first N trace records", rich_help_panel=_WORKLOAD)] = None,
    castillo_data: Annotated[Path | None, typer.Option(
        help="CASTILLO file or folder (default: shared copy)", rich_help_panel=_WORKLOAD)] = None,
    castillo_all_prompts: Annotated[bool, typer.Option(
        help="castillo: also use the predictor's training prompts", rich_help_panel=_WORKLOAD)] = False,
    castillo_model: Annotated[str | None, typer.Option(
        help="Keep rows of this model", rich_help_panel=_WORKLOAD)] = None,
    num_requests: Annotated[int, typer.Option(
        help="castillo: number of requests", rich_help_panel=_WORKLOAD)] = 2000,
    rate: Annotated[float, typer.Option(
        help="castillo: Poisson arrival rate, req/s", rich_help_panel=_WORKLOAD)] = 1.0,
    arrival_trace: Annotated[Path | None, typer.Option(
        help="castillo: take arrival times from this trace", rich_help_panel=_WORKLOAD)] = None,
    seed: Annotated[int, typer.Option(rich_help_panel=_WORKLOAD)] = 0,
    output: Annotated[Path | None, typer.Option(help="Summary (or sweep) JSON")] = None,
    per_request: Annotated[Path | None, typer.Option(help="Per-request .csv or .parquet")] = None,
    sweep_rate: Annotated[str | None, typer.Option(
        help="Comma-separated loads (offered/saturation), e.g. 0.5,0.7,0.9",
        rich_help_panel=_SWEEP)] = None,
    policies: Annotated[str, typer.Option(
        help="--sweep-rate: policies to compare", rich_help_panel=_SWEEP)] = "fcfs,sjf",
    sweep_predictions: Annotated[str, typer.Option(
        help="--sweep-rate: prediction sources of the non-fcfs policies",
        rich_help_panel=_SWEEP)] = "predictor,oracle",
    plot: Annotated[bool, typer.Option(
        "--plot/--no-plot", help="--sweep-rate: write the latency-vs-load PNG beside --output",
        rich_help_panel=_SWEEP)] = False,
    progress: Annotated[bool | None, typer.Option(help="Progress bar (default: long runs)")] = None,
) -> None:
    """Replay TRACE through the gateway policy and vLLM-like engines."""
    if workers_deprecated is not None:
        typer.echo("--workers is deprecated: it is --engines (a count of simulated engines; "
                   "the gateway's `workers` setting lists URLs)", err=True)
        engines = workers_deprecated
    if plot and not (sweep_rate and output):
        _fail("--plot needs --sweep-rate and --output (the PNG goes beside the JSON)")
    try:
        engine = EngineOptions(
            cost_model, num_layers, step_overhead_ms,
            EngineConfig(max_num_seqs, max_num_batched_tokens, kv_cache_tokens, block_size,
                         prefix_caching=prefix_caching, async_scheduling=async_scheduling),
            engine_queue, max_model_len, engines)
        workload = WorkloadOptions(trace, limit, castillo_data, castillo_all_prompts,
                                   castillo_model, num_requests, rate, arrival_trace, seed)
        gateway = GatewayOptions(policy, predictions, point_estimate, aging_s_per_token,
                                 noise_sigma, admission, admission_max_seqs,
                                 admission_max_predicted_tokens, queue_capacity)
        gateway.limits()
        latency = engine.latency()
        requests = workload.load()
        cache = PredictionCache(requests, gateway, seed)
        if sweep_rate:
            report = run_load_sweep(requests, _parse_floats(sweep_rate),
                                    parse_arms(policies, sweep_predictions), engine, gateway,
                                    latency, cache, progress=lambda line: typer.echo(line, err=True))
            report["trace"] = trace
            _write_sweep(report, output, plot)
            return
        _run_one(requests, engine, gateway, latency, cache, output, per_request,
                 progress if progress is not None else len(requests) > 5000, trace)
    except RunError as exc:
        _fail(str(exc))
    except ValueError as exc:  # invalid engine or admission values
        _fail(str(exc))


def _write_sweep(report: dict, output: Path | None, plot: bool) -> None:
    from lengthwise.common.extras import plotting_available

    from .report import write_json
    from .sweep import plot_sweep

    if output:
        write_json(report, output)
    if output and plot and plotting_available(lambda line: typer.echo(line, err=True)):
        plot_sweep(report, output.with_suffix(".png"))
        typer.echo(f"wrote {output.with_suffix('.png')}", err=True)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "policies"}, indent=2))


def _run_one(requests, engine, gateway, latency, cache, output, per_request, show_progress,
             trace) -> None:
    from .report import summarize, write_json, write_per_request
    from .runner import describe, run_one

    hook = None
    bar = None
    if show_progress:
        from lengthwise.common.extras import progress_bar

        bar = progress_bar(len(requests), "simulating", unit="req")

        def hook(done: int, _now: float) -> None:
            bar.update(done - bar.n)

    one = run_one(requests, engine, gateway, latency, cache, progress=hook)
    if bar is not None:
        bar.close()
    summary = summarize(one.result, describe(one, str(trace), latency))
    if output:
        write_json(summary, output)
    if per_request:
        write_per_request(one.result, per_request)
    typer.echo(json.dumps(summary, indent=2))


@app.command("fit-cost-model")
def fit_cost_model(
    cost_model: Annotated[Path, typer.Option(help="Operator-table folder")],
    num_layers: Annotated[int, typer.Option()],
    output: Annotated[Path, typer.Option(help="Linear model .json to write")],
    max_num_seqs: Annotated[int, typer.Option()] = _DEFAULT_ENGINE.max_num_seqs,
    max_num_batched_tokens: Annotated[int, typer.Option()] = _DEFAULT_ENGINE.max_num_batched_tokens,
    max_context: Annotated[int, typer.Option()] = 8192,
    samples: Annotated[int, typer.Option()] = 3000,
    knee_tokens: Annotated[int | None, typer.Option(help="Piecewise split in tokens")] = 512,
) -> None:
    """Fit the linear step model to an operator table and write its coefficients."""
    from .latency import fit_linear, sample_batch_shapes
    from .operator_tables import OperatorTableModel

    table = OperatorTableModel(cost_model, num_layers)
    shapes = sample_batch_shapes(samples, max_num_seqs, max_num_batched_tokens, max_context)
    times = [table.step_time(s) for s in shapes]
    model = fit_linear(shapes, times, knee_tokens=knee_tokens,
                       source=f"fit to {cost_model} x {num_layers} layers, {samples} random shapes")
    model.save(output)
    typer.echo(json.dumps(model.to_dict(), indent=2))


@app.command("calibrate")
def calibrate(
    worker: Annotated[str, typer.Option(
        help="A running vLLM worker's base URL; required (calibration measures that worker)")],
    output: Annotated[Path, typer.Option(help="Linear model .json to write")] = report_path(
        "sim_calibration_cpu.json"),
    model: Annotated[str | None, typer.Option(help="Served model name (default: first listed)")] = None,
    batch_sizes: Annotated[str, typer.Option()] = "1,4,8,16",
    prompt_tokens: Annotated[str, typer.Option()] = "32,256,768",
    decode_tokens: Annotated[int, typer.Option(help="max_tokens per request in decode runs")] = 24,
    timeout_s: Annotated[float, typer.Option()] = 240.0,
    temperature: Annotated[float, typer.Option(
        help="Sampling temperature of the probes (the live benchmark's)")] = LIVE_BENCH_TEMPERATURE,
    top_p: Annotated[float, typer.Option(
        help="top-p of the probes (the live benchmark's)")] = LIVE_BENCH_TOP_P,
    seeded: Annotated[bool, typer.Option(
        help="A distinct seed per probe, as the live benchmark sends")] = True,
    overhead_probes: Annotated[int, typer.Option(
        help="Streamed chat requests that measure the per-request overhead (0 = skip)")] = 6,
) -> None:
    """Measure a live worker over a short sweep of batch shapes and fit the step model.

    Also measures the per-request overhead outside engine steps (chat template,
    tokenisation, HTTP, response tail); ``simulate fidelity`` replays it.
    """
    from .calibrate import CalibrationPlan, run_calibration

    plan = CalibrationPlan(
        batch_sizes=[int(x) for x in _parse_floats(batch_sizes)],
        prompt_tokens=[int(x) for x in _parse_floats(prompt_tokens)],
        decode_tokens=decode_tokens,
        temperature=temperature,
        top_p=top_p,
        seeded=seeded,
        overhead_probes=overhead_probes,
    )
    try:
        result = run_calibration(worker, plan, model=model, budget_s=timeout_s)
    except (OSError, ValueError, RuntimeError) as exc:
        _fail(f"calibration failed: {exc}")
    result.save(output)
    typer.echo(json.dumps({
        "model": result.model.to_dict(),
        "request_overhead": result.overhead.to_dict() if result.overhead else None,
        "measurements": result.table(),
    }, indent=2))


class ArrivalsChoice(StrEnum):
    BURST = "burst"
    LOGGED = "logged"


@app.command("fidelity")
def fidelity(
    logs: Annotated[list[Path], typer.Argument(
        help="Gateway request logs of a live run, one per arm (bench live --output "
             "reports/live_bench.json writes reports/live_bench.logs/"
             "gateway_{fcfs,sjf}.requests.jsonl)")],
    cost_model: Annotated[Path, typer.Option(
        help="Step model from `simulate calibrate` on the same worker")],
    num_layers: Annotated[int | None, typer.Option(help="Only for operator tables")] = None,
    client_arrivals: Annotated[ArrivalsChoice, typer.Option(
        help="burst: the client sent all requests at once (bench live --arrivals burst); "
             "logged: replay the logged queue-entry times (Poisson runs)")] = ArrivalsChoice.BURST,
    max_num_seqs: Annotated[int | None, typer.Option(
        help="Worker --max-num-seqs (default: the bench worker's 16)")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(
        help="Worker token budget (default: max(max_model_len, 2048), chunked prefill off)")] = None,
    kv_cache_tokens: Annotated[int | None, typer.Option(
        help="Worker KV capacity in tokens (its log: 'KV cache size')")] = None,
    block_size: Annotated[int | None, typer.Option(help="KV block size (vLLM CPU: 128)")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Worker --max-model-len")] = None,
    chunked_prefill: Annotated[bool | None, typer.Option(
        "--chunked-prefill/--no-chunked-prefill",
        help="Worker chunked prefill (default: WorkerConfig's, off)")] = None,
    engine_queue: Annotated[EngineQueueChoice, typer.Option(
        help="Worker --scheduling-policy (auto: WorkerConfig's, priority)")] = EngineQueueChoice.AUTO,
    admission_max_seqs: Annotated[int | None, typer.Option(
        help="Gateway --max-sequences-per-worker of the live run (default: bench live's)")] = None,
    aging_s_per_token: Annotated[float | None, typer.Option(
        help="sjf-aged aging of the live run (default: bench live's)")] = None,
    request_overhead_ms: Annotated[float | None, typer.Option(
        help="Per-request time before the engine (default: the cost model's "
             "request_overhead.pre_engine_s, else 0)")] = None,
    response_overhead_ms: Annotated[float | None, typer.Option(
        help="Per-request time after the last token (default: request_overhead.post_engine_s)")
    ] = None,
    gateway_overhead_ms: Annotated[float, typer.Option(
        help="The gateway's own hop per request (bench overhead: paired_overhead_p50_ms)")] = 0.0,
    tolerance: Annotated[float, typer.Option(help="Allowed |relative error| of the means")] = 0.10,
    what_if: Annotated[str | None, typer.Option(
        help="Also replay the first log under fcfs, sjf-aged (logged predictions) and "
             "sjf-aged with the true lengths (oracle) at these gateway admission limits, "
             "e.g. '16,8,4': how much ordering can buy on this workload")] = None,
    output: Annotated[Path, typer.Option(help="JSON report")] = report_path(
        "sim_fidelity_live.json"),
    strict: Annotated[bool, typer.Option(help="Exit 1 when an arm misses the tolerance")] = False,
) -> None:
    """Replay a live run's gateway logs through the simulator; compare E2E and TTFT."""
    from lengthwise.common.files import write_json_report

    from .fidelity import (
        ClientArrivals,
        LiveOverrides,
        format_table,
        live_setup,
        policy_what_if,
        run_fidelity,
    )
    from .latency import load_cost_model

    overrides = LiveOverrides(
        client_arrivals=ClientArrivals(client_arrivals.value), tolerance=tolerance,
        gateway_overhead_s=gateway_overhead_ms / 1000.0, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, kv_cache_tokens=kv_cache_tokens,
        block_size=block_size, chunked_prefill=chunked_prefill,
        engine_queue=None if engine_queue == EngineQueueChoice.AUTO else engine_queue.value,
        max_model_len=max_model_len, admission_max_seqs=admission_max_seqs,
        aging_s_per_token=aging_s_per_token,
        request_overhead_s=None if request_overhead_ms is None else request_overhead_ms / 1000,
        response_overhead_s=None if response_overhead_ms is None else response_overhead_ms / 1000)
    try:
        latency = load_cost_model(cost_model, num_layers)
        setup = live_setup(overrides, cost_model)
        report = run_fidelity(logs, latency, setup)
        if what_if:
            admissions = [int(x) for x in what_if.split(",") if x.strip()]
            report["what_if"] = policy_what_if(logs[0], latency, setup, admissions)
    except (OSError, ValueError, KeyError) as exc:
        _fail(str(exc))
    write_json_report(output, report)
    typer.echo(format_table(report))
    for row in report.get("what_if", {}).get("rows", []):
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in row["e2e_mean_over_fcfs"].items())
        typer.echo(f"what-if, admission {row['admission_max_sequences']}: mean E2E / fcfs: {ratios}")
    typer.echo(f"wrote {output}")
    if strict and not report["pass"]:
        raise typer.Exit(1)


@app.command("fidelity-vllm")
def fidelity_vllm(
    run_dir: Annotated[Path, typer.Argument(help="A real vLLM run (vllm_requests.jsonl, vllm_meta.json)")],
    cost_model: Annotated[Path, typer.Option(help="The run's GPU: an LLMServingSim operator-table folder")],
    num_layers: Annotated[int | None, typer.Option(help="Decoder layers (default: known from the tables' model)")] = None,
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree of the tables to use")] = 1,
    kv_cache_tokens: Annotated[int | None, typer.Option(
        help="KV cache size vLLM logged (default: the run's record, else an estimate)")] = None,
    ablation: Annotated[bool, typer.Option(help="Also replay without each engine-model piece")] = True,
    output: Annotated[Path, typer.Option(help="JSON report")] = report_path(
        "sim_fidelity_vllm.json"),
    strict: Annotated[bool, typer.Option(help="Exit 1 when a mean misses the tolerance")] = False,
) -> None:
    """Replay a real vLLM run on its GPU's operator tables; compare mean TTFT, E2E and TPOT."""
    from lengthwise.common.files import write_json_report

    from .operator_tables import OperatorTableModel
    from .vllm_run import VllmRun, fidelity_report, format_report

    try:
        run = VllmRun.load(run_dir)
        tables = {skew: OperatorTableModel(cost_model, num_layers, tp=tp, skew=skew)
                  for skew in (True, False)}
        report = fidelity_report(run, tables.__getitem__, kv_cache_tokens, ablation)
    except (OSError, ValueError, KeyError) as exc:
        _fail(str(exc))
    write_json_report(output, report)
    typer.echo(format_report(report))
    typer.echo(f"wrote {output}")
    if strict and not report["pass"]:
        raise typer.Exit(1)


@app.command("regimes")
def regimes(
    cost_model: Annotated[Path | None, typer.Option(
        help="Operator-table folder (default: the shared RTX PRO 6000 tables)")] = None,
    num_layers: Annotated[int | None, typer.Option(help="Decoder layers (default: from the tables)")] = None,
    workloads: Annotated[str | None, typer.Option(
        help="Comma-separated workloads (default: all; see simulator.regimes)")] = None,
    loads: Annotated[str, typer.Option(help="Offered load over plain vLLM's saturation")] = "0.5,0.75,1,1.25,1.5",
    burst: Annotated[bool, typer.Option(help="Add the on/off burst cell")] = True,
    seeds: Annotated[str, typer.Option(help="Seeds (the defaults were tuned on seed 0)")] = "1",
    num_requests: Annotated[int, typer.Option()] = 2000,
    roomy_kv_tokens: Annotated[int, typer.Option(help="KV cache of the roomy GPU")] = RTX_PRO_6000_KV_TOKENS,
    memory_bound_kv_tokens: Annotated[int, typer.Option(help="KV cache of the 24 GB card")] = RTX_4090_KV_TOKENS,
    variants: Annotated[str | None, typer.Option(
        help="Extra gateway admission arms, e.g. 'kv_budget=2;kv_budget=3,engine_queue=8'")] = None,
    output: Annotated[Path, typer.Option(
        help="JSON report; the table (.md) and heatmaps (<stem>_<figure>.png) go beside it")
    ] = report_path("regime_map.json"),
    plot: Annotated[bool, typer.Option(
        "--plot/--no-plot", help="Write the heatmap PNGs beside --output")] = True,
) -> None:
    """The regime map: plain vLLM vs the default gateway vs the oracle, by GPU, workload, load."""
    from lengthwise.common.paths import shared_dir
    from predictor.api import load_served_predictor
    from server.config import GatewayConfig

    from .latency import RTX_PRO_6000_TABLES, load_cost_model
    from .regimes import (
        MEMORY_BOUND,
        ROOMY,
        RegimeRunner,
        RegimeSpec,
        default_workloads,
        variant_arms,
        worst_throughput,
        write_outputs,
    )

    gateway = GatewayConfig()
    known = default_workloads()
    chosen = [w.strip() for w in workloads.split(",")] if workloads else list(known)
    unknown = [w for w in chosen if w not in known]
    if unknown:
        _fail(f"unknown workloads {unknown}; known: {', '.join(known)}")
    try:
        latency = load_cost_model(cost_model or shared_dir() / RTX_PRO_6000_TABLES, num_layers)
        extra = variant_arms(variants or "", gateway.policy_config, gateway.admission_limits)
        spec = RegimeSpec(
            gpus=(replace(ROOMY, kv_cache_tokens=roomy_kv_tokens),
                  replace(MEMORY_BOUND, kv_cache_tokens=memory_bound_kv_tokens)),
            workloads=chosen, loads=_parse_floats(loads), burst=burst,
            seeds=[int(x) for x in _parse_floats(seeds)], num_requests=num_requests,
            extra_arms=tuple(extra))
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    predictor = load_served_predictor() if any(known[w].prompts for w in chosen) else None
    runner = RegimeRunner(spec, latency, gateway.policy_config, gateway.admission_limits,
                          predictor, known, progress=lambda line: typer.echo(line, err=True))
    report = runner.run()
    report["predictor_version"] = getattr(predictor, "version", None)
    for path in write_outputs(report, output, plot, say=lambda line: typer.echo(line, err=True)):
        typer.echo(f"wrote {path}")
    worst = worst_throughput(report)
    if worst:
        typer.echo(f"default gateway's worst throughput ratio: {worst['ratio']:.3f} ({worst})")
