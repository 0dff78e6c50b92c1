"""``lengthwise simulate …``: replay a trace through the simulated gateway and engines.

``lengthwise simulate TRACE [options]`` runs one simulation (``run`` is the
default subcommand); ``calibrate`` fits a step-time model to a live vLLM
worker; ``fit-cost-model`` fits the linear model to an operator table;
``fidelity`` replays a live run's gateway request logs and compares latencies.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from server.policy import PolicyConfig


class _DefaultRunGroup(TyperGroup):
    """Makes ``lengthwise simulate TRACE …`` mean ``lengthwise simulate run TRACE …``."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(no_args_is_help=True, add_completion=False, cls=_DefaultRunGroup, help=__doc__)


class PolicyChoice(StrEnum):
    FCFS = "fcfs"
    SJF = "sjf"
    SJF_AGED = "sjf-aged"
    SJF_ORACLE = "sjf-oracle"
    SJF_AGED_ORACLE = "sjf-aged-oracle"


class EngineQueueChoice(StrEnum):
    AUTO = "auto"
    FCFS = "fcfs"
    PRIORITY = "priority"


class PredictionChoice(StrEnum):
    AUTO = "auto"
    PREDICTOR = "predictor"
    TRACE = "trace"
    ORACLE = "oracle"
    ORACLE_NOISE = "oracle-noise"
    NONE = "none"


CASTILLO = "castillo"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"expected comma-separated numbers, got {text!r}")
        raise


def _load_trained_predictor():
    """The default trained artifact (``predictor.api``); trains it first if it is missing."""
    from predictor.api import load_default_predictor

    return load_default_predictor()


@app.command("run")
def run(
    trace: Annotated[str, typer.Argument(help="Trace file (.csv/.jsonl) or 'castillo'")],
    cost_model: Annotated[Path, typer.Option(help="Operator-table folder or linear-model .json")],
    num_layers: Annotated[int | None, typer.Option(help="Decoder layers (operator tables time one)")] = None,
    step_overhead_ms: Annotated[float, typer.Option(help="Host time added to every step")] = 0.0,
    max_num_seqs: Annotated[int, typer.Option()] = 256,
    max_num_batched_tokens: Annotated[int, typer.Option()] = 2048,
    kv_cache_tokens: Annotated[int, typer.Option(help="KV capacity per worker, tokens")] = 262_144,
    block_size: Annotated[int, typer.Option()] = 16,
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt+output accepted")] = None,
    workers: Annotated[int, typer.Option()] = 1,
    policy: Annotated[PolicyChoice, typer.Option()] = PolicyChoice.FCFS,
    engine_queue: Annotated[EngineQueueChoice, typer.Option(
        help="vLLM --scheduling-policy; auto = fcfs for --policy fcfs, else priority")] = EngineQueueChoice.AUTO,
    aging_s_per_token: Annotated[float, typer.Option()] = PolicyConfig().aging_s_per_token,
    point_estimate: Annotated[str, typer.Option(help="mean, p50 or p90")] = "mean",
    prediction_source: Annotated[PredictionChoice, typer.Option()] = PredictionChoice.AUTO,
    noise_sigma: Annotated[float, typer.Option(help="oracle-noise: log-normal sigma")] = 0.5,
    admission_max_seqs: Annotated[int | None, typer.Option(help="Per-worker in-flight limit")] = None,
    admission_max_predicted_tokens: Annotated[float | None, typer.Option()] = None,
    queue_capacity: Annotated[int | None, typer.Option(help="Gateway queue bound")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N trace records")] = None,
    castillo_data: Annotated[Path | None, typer.Option(help="CASTILLO file or folder (default: shared copy)")] = None,
    castillo_all_prompts: Annotated[bool, typer.Option(help="castillo: also use the predictor's training prompts")] = False,
    castillo_model: Annotated[str | None, typer.Option(help="Keep rows of this model")] = None,
    num_requests: Annotated[int, typer.Option(help="castillo: number of requests")] = 2000,
    rate: Annotated[float, typer.Option(help="castillo: Poisson arrival rate, req/s")] = 1.0,
    arrival_trace: Annotated[Path | None, typer.Option(help="castillo: take arrival times from this trace")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Path | None, typer.Option()] = None,
    per_request: Annotated[Path | None, typer.Option(help="Per-request .csv or .parquet")] = None,
    sweep_rate: Annotated[str | None, typer.Option(
        help="Comma-separated loads (offered/saturation), e.g. 0.5,0.7,0.9")] = None,
    policies: Annotated[str, typer.Option(help="--sweep-rate: policies to compare")] = "fcfs,sjf,sjf-oracle",
    plot: Annotated[Path | None, typer.Option(help="--sweep-rate: latency-vs-load PNG")] = None,
    progress: Annotated[bool | None, typer.Option(help="Progress bar (default: long runs)")] = None,
) -> None:
    """Replay TRACE through the gateway policy and vLLM-like engines."""
    from server.policy import AdmissionLimits, EngineQueueMode, PointEstimate, PolicyConfig

    from .latency import load_cost_model
    from .replica import EngineConfig
    from .simulation import SimConfig

    try:
        latency = load_cost_model(cost_model, num_layers, step_overhead_ms / 1000.0)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    requests = _load_requests(trace, limit, castillo_data, castillo_model, num_requests, rate,
                              arrival_trace, seed, not castillo_all_prompts)
    try:
        estimate = PointEstimate(point_estimate)
        base_policy = PolicyConfig(point_estimate=estimate, aging_s_per_token=aging_s_per_token)
        admission = AdmissionLimits.fixed(admission_max_seqs, admission_max_predicted_tokens)
        engine_kwargs = {
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
            "kv_cache_tokens": kv_cache_tokens,
            "block_size": block_size,
        }
        EngineConfig(**engine_kwargs)  # validate early
    except ValueError as exc:
        _fail(str(exc))

    def config_for(choice: PolicyChoice) -> SimConfig:
        if engine_queue == EngineQueueChoice.AUTO:
            mode = EngineQueueMode.FCFS if choice == PolicyChoice.FCFS else EngineQueueMode.PRIORITY
        else:
            mode = EngineQueueMode(engine_queue.value)
        return SimConfig(
            engine=EngineConfig(**engine_kwargs, queue_mode=mode),
            workers=workers,
            policy=base_policy,
            admission=admission,
            queue_capacity=queue_capacity,
            max_model_len=max_model_len,
        )

    predictor_cache: dict = {}

    def predictions(choice: PolicyChoice) -> tuple[list[float], str]:
        return _predictions(choice, prediction_source, requests, estimate.value, noise_sigma,
                            seed, predictor_cache)

    show_progress = progress if progress is not None else len(requests) > 5000
    if sweep_rate:
        _run_sweep(requests, sweep_rate, policies, config_for, predictions, latency,
                   output, plot, trace)
        return
    _run_one(requests, policy, config_for(policy), predictions, latency, output,
             per_request, show_progress, trace)


def _policy_name(choice: PolicyChoice):
    from server.policy import PolicyName

    return {
        PolicyChoice.FCFS: PolicyName.FCFS,
        PolicyChoice.SJF: PolicyName.SJF,
        PolicyChoice.SJF_AGED: PolicyName.SJF_AGED,
        PolicyChoice.SJF_ORACLE: PolicyName.SJF,
        PolicyChoice.SJF_AGED_ORACLE: PolicyName.SJF_AGED,
    }[choice]


def _predictions(choice, source, requests, estimate, noise_sigma, seed, cache):
    from .predictions import PredictionError, PredictionSource, predictions_for

    if choice in (PolicyChoice.SJF_ORACLE, PolicyChoice.SJF_AGED_ORACLE):
        resolved = PredictionSource.ORACLE
    elif choice == PolicyChoice.FCFS:
        # FCFS never ranks by length; with several workers, routing then
        # balances sequence counts rather than using anybody's prediction.
        resolved = PredictionSource.NONE
    elif source != PredictionChoice.AUTO:
        resolved = PredictionSource(source.value)
    elif all(r.predicted_tokens is not None for r in requests):
        resolved = PredictionSource.TRACE
    elif all(r.prompt_text for r in requests):
        resolved = PredictionSource.PREDICTOR
    else:
        _fail("this trace has neither predictions nor prompt text: choose --prediction-source "
              "oracle-noise (synthetic, named as such) or oracle")
    predictor = None
    if resolved == PredictionSource.PREDICTOR:
        if "predictor" not in cache:
            cache["predictor"] = _load_trained_predictor()
        predictor = cache["predictor"]
    key = (resolved, estimate)
    if key not in cache:
        try:
            cache[key] = predictions_for(resolved, requests, predictor=predictor,
                                         estimate=estimate, noise_sigma=noise_sigma, seed=seed)
        except PredictionError as exc:
            _fail(str(exc))
    return cache[key], resolved.value


def _load_requests(trace, limit, castillo_data, castillo_model, num_requests, rate,
                   arrival_trace, seed, heldout_only):
    from .trace import TraceFormatError, load_trace
    from .workload import castillo_workload, load_castillo_rows, poisson_arrivals

    if trace != CASTILLO:
        try:
            requests = load_trace(trace, limit=limit)
        except TraceFormatError as exc:
            _fail(str(exc))
        if not requests:
            _fail(f"{trace}: no replayable requests")
        return requests
    from predictor.errors import CastilloDataError

    try:
        rows = load_castillo_rows(castillo_data, model=castillo_model, heldout_only=heldout_only)
    except (FileNotFoundError, ValueError, CastilloDataError) as exc:
        _fail(str(exc))
    if arrival_trace is not None:
        try:
            arrivals = [r.arrival_time for r in load_trace(arrival_trace, limit=num_requests)]
        except TraceFormatError as exc:
            _fail(str(exc))
    else:
        arrivals = poisson_arrivals(num_requests, rate, seed)
    return castillo_workload(rows, arrivals, seed=seed)


def _run_one(requests, choice, config, predictions, latency, output, per_request,
             show_progress, trace) -> None:
    from dataclasses import replace

    from .report import summarize, write_json, write_per_request
    from .simulation import run_simulation

    preds, source = predictions(choice)
    config = replace(config, policy=replace(config.policy, name=_policy_name(choice)))
    hook = None
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), unit="req", file=sys.stderr, desc="simulating")

        def hook(done: int, _now: float) -> None:
            bar.update(done - bar.n)

    result = run_simulation(requests, preds, config, latency, progress=hook)
    if bar is not None:
        bar.close()
    summary = summarize(
        result,
        {
            "trace": str(trace),
            "policy": choice.value,
            "prediction_source": source,
            "engine": {
                "max_num_seqs": config.engine.max_num_seqs,
                "max_num_batched_tokens": config.engine.max_num_batched_tokens,
                "kv_cache_tokens": config.engine.kv_cache_tokens,
                "block_size": config.engine.block_size,
                "scheduling_policy": config.engine.queue_mode.value,
            },
            "workers": config.workers,
            "cost_model": latency.describe(),
        },
    )
    if output:
        write_json(summary, output)
    if per_request:
        write_per_request(result, per_request)
    typer.echo(json.dumps(summary, indent=2))


def _run_sweep(requests, sweep_rate, policies, config_for, predictions, latency, output,
               plot, trace) -> None:
    from .report import write_json
    from .sweep import PolicyArm, plot_sweep, run_sweep

    loads = _parse_floats(sweep_rate)
    if not loads or any(not 0 < x for x in loads):
        _fail("--sweep-rate needs positive loads")
    arms = []
    sources = {}
    for name in [p.strip() for p in policies.split(",") if p.strip()]:
        try:
            choice = PolicyChoice(name)
        except ValueError:
            _fail(f"unknown policy {name!r}")
        preds, source = predictions(choice)
        sources[name] = source
        arms.append(PolicyArm(name, _policy_name(choice), preds))
    # One engine mode per arm: fcfs runs plain vLLM, the others priority.
    base_config = config_for(PolicyChoice.SJF)
    fcfs_config = config_for(PolicyChoice.FCFS)
    report = run_sweep(
        requests,
        arms,
        loads,
        base_config,
        latency,
        progress=lambda line: typer.echo(line, err=True),
        config_for_arm=lambda arm: fcfs_config if arm.label == "fcfs" else base_config,
    )
    report.update({"trace": str(trace), "requests": len(requests), "prediction_sources": sources,
                   "cost_model": latency.describe()})
    if output:
        write_json(report, output)
    if plot:
        plot_sweep(report, plot)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "policies"}, indent=2))


@app.command("fit-cost-model")
def fit_cost_model(
    cost_model: Annotated[Path, typer.Option(help="Operator-table folder")],
    num_layers: Annotated[int, typer.Option()],
    output: Annotated[Path, typer.Option(help="Linear model .json to write")],
    max_num_seqs: Annotated[int, typer.Option()] = 256,
    max_num_batched_tokens: Annotated[int, typer.Option()] = 2048,
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
    worker: Annotated[str, typer.Option(help="Base URL of a live vLLM OpenAI server")],
    output: Annotated[Path, typer.Option(help="Linear model .json to write")] = Path(
        "reports/sim_calibration_cpu.json"),
    model: Annotated[str | None, typer.Option(help="Served model name (default: first listed)")] = None,
    batch_sizes: Annotated[str, typer.Option()] = "1,4,8,16",
    prompt_tokens: Annotated[str, typer.Option()] = "32,256,768",
    decode_tokens: Annotated[int, typer.Option(help="max_tokens per request in decode runs")] = 24,
    timeout_s: Annotated[float, typer.Option()] = 240.0,
    temperature: Annotated[float, typer.Option(
        help="Sampling temperature of the probes (the live benchmark's)")] = 0.7,
    top_p: Annotated[float, typer.Option(help="top-p of the probes (the live benchmark's)")] = 0.95,
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
        help="Gateway request logs of a live run, one per arm (bench live writes "
             "$TMPDIR/lengthwise-bench/gateway_{fcfs,sjf}.requests.jsonl)")],
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
    output: Annotated[Path, typer.Option()] = Path("reports/sim_fidelity_cpu.json"),
    strict: Annotated[bool, typer.Option(help="Exit 1 when an arm misses the tolerance")] = False,
) -> None:
    """Replay a live run's gateway logs through the simulator; compare E2E and TTFT."""
    from dataclasses import replace

    from lengthwise.common.files import write_json_report
    from server.policy import EngineQueueMode

    from .calibrate import RequestOverhead, load_request_overhead
    from .fidelity import (
        ClientArrivals,
        LiveSetup,
        format_table,
        policy_what_if,
        run_fidelity,
    )
    from .latency import load_cost_model

    try:
        latency = load_cost_model(cost_model, num_layers)
        setup = LiveSetup.bench_defaults(client_arrivals=ClientArrivals(client_arrivals.value),
                                         tolerance=tolerance,
                                         gateway_overhead_s=gateway_overhead_ms / 1000.0)
        engine_changes = {k: v for k, v in {
            "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
            "kv_cache_tokens": kv_cache_tokens, "block_size": block_size,
            "chunked_prefill": chunked_prefill,
        }.items() if v is not None}
        if engine_queue != EngineQueueChoice.AUTO:
            engine_changes["queue_mode"] = EngineQueueMode(engine_queue.value)
        if max_model_len is not None:
            setup = replace(setup, max_model_len=max_model_len)
            if max_num_batched_tokens is None and not setup.engine.chunked_prefill:
                engine_changes["max_num_batched_tokens"] = max(max_model_len, 2048)
        setup = replace(setup, engine=replace(setup.engine, **engine_changes))
        if admission_max_seqs is not None:
            setup = replace(setup, admission_max_sequences=admission_max_seqs)
        if aging_s_per_token is not None:
            setup = replace(setup, aging_s_per_token=aging_s_per_token)
        measured = (load_request_overhead(cost_model) if cost_model.suffix == ".json" else None
                    ) or RequestOverhead()
        overhead = RequestOverhead(
            measured.pre_engine_s if request_overhead_ms is None else request_overhead_ms / 1000,
            measured.post_engine_s if response_overhead_ms is None else response_overhead_ms / 1000,
            measured.source if request_overhead_ms is None and response_overhead_ms is None
            else "command line",
        )
        setup = replace(setup, overhead=overhead)
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
    output: Annotated[Path, typer.Option()] = Path("reports/sim_fidelity_vllm.json"),
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
