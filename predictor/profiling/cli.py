"""``lengthwise profile``: profile a served model; ``report`` and ``evaluate`` analyse a profile."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from lengthwise.common.files import write_json_report
from lengthwise.common.paths import report_path

app = typer.Typer(no_args_is_help=True, add_completion=False, invoke_without_command=True,
                  help="Profile a served model CASTILLO-style: "
                       "lengthwise profile --worker URL --model NAME --prompts FILE... --output DIR")


@app.callback()
def profile(
    ctx: typer.Context,
    worker: str | None = typer.Option(None, help="A running vLLM worker's base URL (any OpenAI-compatible server), e.g. http://127.0.0.1:8100; required to profile"),
    model: str | None = typer.Option(None, help="Served model name"),
    prompts: list[Path] = typer.Option([], "--prompts", help="Prompt files (JSON/JSONL instruction records, CASTILLO parquet, text); repeat or list several"),
    samples: int = typer.Option(10, min=1, help="Completions per prompt"),
    output: Path | None = typer.Option(None, help="Run folder (rows.jsonl); rerun to resume"),
    max_tokens: int = typer.Option(1024, min=1, help="Cap on new tokens (degeneration rule scales to it)"),
    temperature: float = typer.Option(0.7, min=0.0),
    top_p: float = typer.Option(0.8, min=0.0, max=1.0),
    top_k: int = typer.Option(20, help="CASTILLO's Qwen2.5 settings by default: 0.7/0.8/20"),
    concurrency: int = typer.Option(16, min=1, help="Requests in flight"),
    limit: int | None = typer.Option(None, min=1, help="Profile only the first N prompts (after interleaving corpora)"),
    seed: int = typer.Option(0, help="Shuffle seed for the prompt order"),
    summary_json: Path | None = typer.Option(None, help="Write the run's throughput figures here"),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if not (worker and model and prompts and output):
        raise typer.UsageError("profiling needs --worker, --model, --prompts and --output "
                               "(or a subcommand: report, evaluate, train)")
    from predictor.profiling.prompt_files import read_prompt_files
    from predictor.profiling.rows import DecodingSettings
    from predictor.profiling.run import RunConfig, profile_prompts

    chosen = read_prompt_files(_expand(prompts), seed=seed)
    if limit:
        chosen = chosen[:limit]
    config = RunConfig(worker, model, DecodingSettings(temperature, top_p, top_k, max_tokens),
                       samples=samples, concurrency=concurrency)
    result = asyncio.run(profile_prompts(chosen, config, output))
    figures = {
        "prompts_total": result.prompts_total, "prompts_already_done": result.prompts_already_done,
        "prompts_finished": result.prompts_finished, "prompts_skipped": result.prompts_skipped,
        "prompts_failed": result.prompts_failed, "samples_finished": result.samples_finished,
        "completion_tokens": result.completion_tokens,
        "seconds": round(result.seconds, 1), "tokens_per_second": round(result.tokens_per_second, 1),
        "seconds_per_prompt": round(result.seconds_per_prompt, 2),
        "samples": samples, "concurrency": concurrency, "max_tokens": max_tokens,
        "eta_seconds_for_1000_prompts": round(result.seconds_per_prompt * 1000, 0),
    }
    if result.samples_finished and result.tokens_per_second > 0:
        # by tokens: meaningful before the first prompt's last sample is in
        per_sample = result.completion_tokens / result.samples_finished
        figures["mean_tokens_per_sample"] = round(per_sample, 1)
        figures["eta_seconds_for_1000_prompts_by_tokens"] = round(
            1000 * samples * per_sample / result.tokens_per_second, 0)
    typer.echo(json.dumps(figures, indent=2))
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        write_json_report(summary_json, figures)


def _expand(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        out.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    return out


@app.command("report")
def report(
    directory: Path = typer.Argument(..., help="Profile run folder (or a rows.jsonl file)"),
    output: Path | None = typer.Option(None, help="Summary JSON (default DIR/report/summary.json)"),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the PNG plots beside --output (the bench extra)"),
    castillo: Path | None = typer.Option(None, help="CASTILLO file or folder (default: the shared copy)"),
) -> None:
    """CASTILLO's per-model analysis of a profile, beside CASTILLO's 13 models."""
    from lengthwise.common.extras import plotting_available
    from predictor.profiling.report import build_report, write_plots

    summary = build_report(directory, castillo)
    folder = (directory if directory.is_dir() else directory.parent) / "report"
    target = output or folder / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_report(target, summary)
    if (plot and summary["served_model"].get("prompts", 1)
            and plotting_available(lambda line: typer.echo(line, err=True))):
        for path in write_plots(directory, target.parent, castillo):
            typer.echo(f"plot: {path}")
    typer.echo(json.dumps(summary["served_model"], indent=2))
    typer.echo(f"wrote {target}")


@app.command("evaluate")
def evaluate(
    directory: Path = typer.Argument(..., help="Profile run folder of the served model"),
    output: Path = typer.Option(report_path("served_model_eval.json"), help="JSON report"),
    castillo: Path | None = typer.Option(None, help="CASTILLO file or folder (default: the shared copy)"),
    test_fraction: float = typer.Option(0.3, min=0.05, max=0.9, help="Held-out share of the profile's prompts"),
) -> None:
    """Kendall tau and MAE on held-out served-model prompts: CASTILLO only, profile only, both."""
    from predictor.profiling.served_eval import evaluate_served_model

    result = evaluate_served_model(directory, castillo, test_fraction)
    target = output
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_report(target, result)
    typer.echo(json.dumps({k: result[k] for k in ("settings", "data")}, indent=2))
    typer.echo(f"wrote {target}")


@app.command("train")
def train(
    directory: Path = typer.Argument(..., help="Profile run folder of the served model"),
    output: Path = typer.Option(..., help="Predictor folder to write (serve it with --predictor-dir)"),
    castillo: Path | None = typer.Option(None, help="CASTILLO file or folder (default: the shared copy)"),
    exclude_prompts: list[Path] = typer.Option(
        [], help="Prompt files whose prompts are left out of the profile's rows (e.g. a "
                 "benchmark's), in any format `lengthwise profile` reads"),
) -> None:
    """Train a predictor on CASTILLO plus the served model's profile (the served model as one
    more known model), for `lengthwise serve --predictor-dir OUTPUT`."""
    from predictor.artifact import read_meta
    from predictor.profiling.served_eval import train_served_artifact

    directory_out = train_served_artifact(directory, output, castillo, exclude_prompts)
    meta = read_meta(directory_out) or {}
    typer.echo(json.dumps({"artifact": str(directory_out),
                           "served_model_profile": meta.get("data", {}).get("served_model_profile"),
                           "training_seconds": meta.get("training_seconds")}, indent=2))
