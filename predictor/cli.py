"""``lengthwise predictor …`` subcommands: train, ensure, eval, predict, train-second-stage."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lengthwise.common.files import write_json_report

app = typer.Typer(no_args_is_help=True, add_completion=False)


class Split(str, Enum):
    all = "all"
    holdout = "holdout"


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=float))


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="CASTILLO file or folder (default: shared copy, else the hub)")] = None,
    output: Annotated[Path | None, typer.Option(help="artifact directory (default: cache_dir()/predictor/v<version>)")] = None,
    holdout: Annotated[bool, typer.Option(help="leave the fixed evaluation prompt group out of training")] = True,
) -> None:
    """Train the length predictor artifact and print its meta.json summary."""
    from predictor.artifact import read_meta, train_artifact
    from predictor.loader import load_castillo

    frame = load_castillo(data)
    directory = train_artifact(frame, output, holdout=holdout, source=str(data or "default"))
    meta = read_meta(directory)
    _print_json({"artifact": str(directory), "training_seconds": meta["training_seconds"],
                 "data": meta["data"], "feature_set": meta["feature_set"],
                 "metrics": meta["metrics"]})


@app.command()
def ensure(
    data: Annotated[Path | None, typer.Option(help="CASTILLO file or folder (default: shared copy, else the hub)")] = None,
) -> None:
    """Train the default artifact only if it is missing, stale or on other data (for set-up scripts)."""
    import time

    from predictor.artifact import ensure_trained, read_meta

    started = time.perf_counter()
    directory = ensure_trained(data)
    meta = read_meta(directory)
    _print_json({"artifact": str(directory), "artifact_version": meta["artifact_version"],
                 "fingerprint": meta["data"]["fingerprint"],
                 "training_seconds": meta["training_seconds"],
                 "seconds_this_call": round(time.perf_counter() - started, 2)})


@app.command("eval")
def evaluate_command(
    data: Annotated[Path, typer.Option(help="CASTILLO-schema parquet/JSON file or folder")],
    output: Annotated[Path, typer.Option(help="JSON report to write (the evaluation figures)")],
    split: Annotated[Split, typer.Option(help="'holdout': only the rows of the default artifact's held-out prompt group")] = Split.all,
    artifact: Annotated[Path | None, typer.Option(help="artifact directory (default: the default artifact, trained first if missing)")] = None,
    drop_degenerate: Annotated[bool, typer.Option(help="also drop the paper's degenerate rows from the evaluation rows")] = False,
    latency_requests: Annotated[int, typer.Option(help="single requests timed for the latency figures")] = 500,
) -> None:
    """Evaluate the trained predictor (benchmark figures, written as JSON)."""
    from predictor.api import CastilloLengthPredictor
    from predictor.artifact import default_artifact_dir, ensure_trained, read_meta, split_holdout
    from predictor.baselines import Baselines
    from predictor.cleaning import degenerate_mask, remove_degenerate
    from predictor.evaluate import evaluate
    from predictor.loader import read_path

    directory = artifact or default_artifact_dir()
    if read_meta(directory) is None:
        if artifact is not None:
            raise typer.BadParameter(f"no trained artifact in {artifact}")
        directory = ensure_trained()
    frame = read_path(data)
    if split is Split.holdout:
        _, frame = split_holdout(frame)
    cap_hit, high_variance = degenerate_mask(frame)
    degenerate = int((cap_hit | high_variance).sum())
    if drop_degenerate:
        frame, _ = remove_degenerate(frame)
    if frame.empty:
        raise typer.BadParameter("no rows to evaluate")
    predictor = CastilloLengthPredictor.from_directory(directory)
    baselines = Baselines.from_dict(json.loads((directory / "baselines.json").read_text()))
    trained_on = set((directory / "train_prompt_ids.txt").read_text().split())
    report = evaluate(predictor, frame, baselines, trained_on, latency_requests)
    report.update({"data": str(data), "split": split.value, "rows_degenerate": degenerate,
                   "degenerate_dropped": drop_degenerate, "artifact": str(directory),
                   "artifact_version": predictor.version,
                   "feature_set": predictor.meta.get("feature_set")})
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_report(output, report)
    summary = {k: v for k, v in report.items() if k != "kendall_tau_by_model"}
    _print_json(summary)


@app.command()
def predict(
    prompt: Annotated[str, typer.Argument(help="prompt text, or a JSON list of chat messages with --messages")],
    model: Annotated[str, typer.Option(help="served model name")],
    max_tokens: Annotated[int | None, typer.Option(help="the request's max_tokens (caps the prediction)")] = None,
    messages: Annotated[bool, typer.Option(help="PROMPT is a JSON list of chat messages")] = False,
    artifact: Annotated[Path | None, typer.Option(help="artifact directory (default: the one `lengthwise serve` serves, trained if missing)")] = None,
) -> None:
    """Predict one request's completion length; prints JSON."""
    from dataclasses import asdict

    from predictor.api import PredictorNotAvailable, load_served_predictor
    from predictor.errors import PredictorInputError

    try:  # the gateway's own loading: an existing artifact needs no training extra
        predictor = load_served_predictor(artifact)
    except PredictorNotAvailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        payload = json.loads(prompt) if messages else prompt
        prediction = predictor.predict(payload, model, max_tokens)
    except (PredictorInputError, json.JSONDecodeError) as exc:
        typer.echo(json.dumps({"error": str(exc)}), err=True)
        raise typer.Exit(2) from exc
    _print_json({**asdict(prediction), "model": model, "max_tokens": max_tokens,
                 "artifact_version": predictor.version})


@app.command("train-second-stage")
def train_second_stage(
    data: Annotated[Path | None, typer.Option(help="CASTILLO file or folder (default: shared copy, else the hub)")] = None,
    artifact: Annotated[Path | None, typer.Option(help="first-stage artifact to train beside (default: the default artifact)")] = None,
) -> None:
    """Train the optional second stage (MiniLM embedding + LightGBM; the 'embeddings' extra)
    into <artifact>/second_stage, on the rows and hold-out of the artifact beside it."""
    from dataclasses import replace

    from predictor.artifact import default_artifact_dir, read_meta, train_artifact
    from predictor.features import FeatureConfig
    from predictor.loader import load_castillo
    from predictor.refine import second_stage_dir

    first = artifact or default_artifact_dir()
    meta = read_meta(first)
    if meta is None:
        raise typer.BadParameter(f"no trained artifact in {first}; run `lengthwise predictor ensure`")
    config = replace(FeatureConfig.from_dict(meta["features"]), minilm=True)
    directory = train_artifact(load_castillo(data), second_stage_dir(first),
                               holdout=meta["data"]["holdout"]["enabled"],
                               source=str(data or "default"), feature_config=config)
    trained = read_meta(directory)
    _print_json({"second_stage": str(directory), "training_seconds": trained["training_seconds"],
                 "feature_set": trained["feature_set"], "metrics": trained["metrics"]})
