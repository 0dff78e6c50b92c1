"""``lengthwise eval ...``: EDT quality/diversity evaluation and EDT cost benchmark.

Both run against a real vLLM worker with the EDT processor loaded: the one at
``--worker-url`` if given (e.g. the shared dev worker), otherwise a fresh local
CPU worker started for the run and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import typer

from predictor.files import write_json_report

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@contextlib.contextmanager
def _worker(worker_url: str | None, model: str | None) -> Iterator[tuple[str, str]]:
    from server.worker_process import WorkerConfig, WorkerProcess, free_port

    if worker_url:
        url = worker_url.rstrip("/")
        if model is None:
            import urllib.request

            with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as resp:
                model = json.load(resp)["data"][0]["id"]
        yield url, model
        return
    from server.local_model import prepare_local_model

    local = prepare_local_model()
    config = WorkerConfig(model_path=local.path, served_model_name=local.name, port=free_port())
    typer.echo(f"starting a vLLM worker on {config.base_url} (log in {config.log_path or '/tmp'})")
    with WorkerProcess(config) as worker:
        yield worker.base_url, config.served_model_name


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@app.command("edt")
def eval_edt(
    worker_url: str = typer.Option(None, help="Existing vLLM worker (with the EDT processor)."),
    model: str = typer.Option(None, help="Served model name (default: the worker's first)."),
    per_category: int = typer.Option(13, help="Prompts per Dolly category (3 categories)."),
    samples: int = typer.Option(4, help="Samples per prompt (k >= 2 for Self-BLEU)."),
    max_tokens: int = typer.Option(200),
    concurrency: int = typer.Option(48, help="Requests in flight (each asks for n=samples)."),
    fixed: str = typer.Option("0.3,0.7,1.0,1.3", help="Fixed temperatures."),
    edt_t0: str = typer.Option("1.0,1.3", help="EDT base temperatures T0."),
    edt_theta: str = typer.Option("0.5,1.5", help="EDT theta values."),
    edt_n: float = typer.Option(0.8, help="EDT base N."),
    seed: int = typer.Option(0),
    output: Path = typer.Option(None, help="JSON report (default reports/edt_eval.json)."),
    no_plot: bool = typer.Option(False, help="Skip the PNG plot."),
) -> None:
    """Quality (ROUGE-L), diversity (Self-BLEU) and length of EDT vs fixed temperature."""
    from predictor.locations import reports_dir
    from server.edt.evaluate import build_grid, evaluate, write_report

    if samples < 2:
        raise typer.BadParameter("--samples must be at least 2 for Self-BLEU")
    grid = build_grid(_floats(fixed), _floats(edt_t0), _floats(edt_theta), edt_n)
    json_path = output or reports_dir() / "edt_eval.json"
    png_path = None if no_plot else json_path.with_suffix(".png")
    with _worker(worker_url, model) as (url, served):
        json_path.parent.mkdir(parents=True, exist_ok=True)
        report = evaluate(url, served, grid, per_category, samples, max_tokens, concurrency, seed,
                          progress=typer.echo, partial_path=json_path)
    write_report(report, json_path, png_path)
    typer.echo(f"best fixed: {report['best_fixed']}; best EDT: {report['best_edt']}; "
               f"Pareto front: {', '.join(report['pareto_front'])}")
    typer.echo(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))


@app.command("edt-cost")
def eval_edt_cost(
    worker_url: str = typer.Option(None, help="Existing vLLM worker (with the EDT processor)."),
    model: str = typer.Option(None, help="Served model name (default: the worker's first)."),
    requests: int = typer.Option(48, help="Requests per run."),
    max_tokens: int = typer.Option(128, help="Tokens per request (ignore_eos)."),
    concurrency: int = typer.Option(32),
    rounds: int = typer.Option(2, help="ABBA rounds (fixed, EDT, EDT, fixed)."),
    theta: float = typer.Option(1.0),
    output: Path = typer.Option(None, help="JSON report (default reports/edt_cost.json)."),
) -> None:
    """Tokens/s with EDT on every request vs the same requests at fixed temperature."""
    from predictor.locations import reports_dir
    from server.edt.cost import CostConfig, run_cost_benchmark

    cfg = CostConfig(requests=requests, max_tokens=max_tokens, concurrency=concurrency,
                     rounds=rounds, theta=theta)
    json_path = output or reports_dir() / "edt_cost.json"
    with _worker(worker_url, model) as (url, served):
        report = run_cost_benchmark(url, served, cfg, progress=typer.echo)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_report(json_path, report)
    typer.echo(f"fixed {report['fixed_tok_s']} tok/s, EDT {report['edt_tok_s']} tok/s, "
               f"ratio {report['ratio']} (target >= {report['target_ratio']})")
    typer.echo(f"wrote {json_path}")
