"""``lengthwise serve``: run the gateway (and, with no workers configured, one local vLLM
worker, supervised: restarted with backoff whenever it dies or stops answering)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=False, add_completion=False)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default 8000)."),
    worker: list[str] | None = typer.Option(
        None, "--worker", help="A running vLLM worker's base URL; repeat for several. "
        "Without any (here, in the config file or LENGTHWISE_WORKERS), a local vLLM CPU "
        "worker serving SmolLM2-135M-Instruct is started.",
    ),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False,
        help="Settings file (YAML, TOML or JSON); env LENGTHWISE_* and flags override it.",
    ),
    policy: str | None = typer.Option(None, help="fcfs, sjf or sjf-aged."),
    max_sequences_per_worker: int | None = typer.Option(
        None, help="A hand-set cap on in-flight requests per worker (default: none; "
        "admission follows each worker's engine)."
    ),
    queue_capacity: int | None = typer.Option(None, help="Requests the queue holds."),
    api_key: list[str] | None = typer.Option(
        None, "--api-key", help="Accepted API key; repeat for several (default: none needed)."
    ),
    request_log: Path | None = typer.Option(None, help="JSON Lines request log path."),
    predictor_dir: Path | None = typer.Option(None, help="Trained predictor folder."),
    worker_port: int = typer.Option(0, help="Port of the local vLLM worker (0: a free one)."),
    log_level: str = typer.Option("info", help="Gateway log level."),
    help_config: bool = typer.Option(False, "--help-config", help="List every setting and exit."),
) -> None:
    """Serve the OpenAI-compatible gateway."""
    from prometheus_client import CollectorRegistry

    from server.app import create_app
    from server.config import describe_settings
    from server.shutdown import serve_app

    if help_config:
        typer.echo(describe_settings())
        raise typer.Exit(0)
    configure_logging(log_level)
    cfg = _settings(config, {
        "host": host, "port": port, "workers": worker or None, "policy": policy,
        "max_sequences_per_worker": max_sequences_per_worker, "queue_capacity": queue_capacity,
        "api_keys": api_key or None, "request_log_path": request_log,
        "predictor_dir": predictor_dir,
    })
    # First, so a predictor that cannot be served stops us before a worker is started.
    predictor = _predictor(cfg)
    registry = CollectorRegistry()
    with contextlib.ExitStack() as stack:
        local = None
        if not cfg.workers and not cfg.worker_dns_name:
            local = stack.enter_context(_local_worker(worker_port, registry))
            stack.callback(typer.echo, "Stopping the local vLLM worker ...")
            # The gateway knows its own worker's slots; a remote engine's are learned.
            cfg = cfg.model_copy(update={
                "workers": [local.base_url],
                "worker_max_num_seqs": cfg.worker_max_num_seqs or local.config.max_num_seqs})
        application = create_app(cfg, predictor=predictor, registry=registry)
        base = f"http://{cfg.host}:{cfg.port}/v1"
        typer.echo(f"Lengthwise gateway on {base}  (policy {cfg.policy.value}, "
                   f"workers: {', '.join(cfg.workers) or cfg.worker_dns_name})")
        typer.echo(f"Point an OpenAI client at it:  OpenAI(base_url=\"{base}\", "
                   f"api_key={'<one of your keys>' if cfg.api_keys else 'any string'!r})")
        if local is not None:
            typer.echo(f"Model: {local.config.served_model_name}")
        # SIGTERM drains (503 to new requests, in-flight ones finish), then exits 0.
        serve_app(application, cfg, log_level=log_level)


def _settings(config: Path | None, overrides: dict):
    """The settings, checked (a shared rate-limit store must answer); exits 2 if not."""
    from server.config import load_config

    try:
        cfg = load_config(config, overrides)
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    if cfg.rate_limit_redis_url is not None and (
            cfg.rate_limit_requests_per_min or cfg.rate_limit_tokens_per_min):
        from server.rate_limit_redis import RateLimitStoreUnavailable, check_reachable

        try:
            check_reachable(cfg.rate_limit_redis_url.get_secret_value())
        except RateLimitStoreUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    return cfg


def _predictor(cfg):
    """The length predictor the settings name (and their second stage, if on); exits 2
    with a one-line reason if it cannot be served."""
    from predictor.api import PredictorNotAvailable
    from server.app import default_predictor

    typer.echo("Loading the length predictor ...")
    try:
        predictor = default_predictor(cfg)
        if cfg.second_stage:
            from server.gateway import load_required_second_stage

            load_required_second_stage(cfg)
    except PredictorNotAvailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return predictor


def configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # httpx logs every request it sends at INFO: with a health probe and a metrics
        # scrape per worker every 2 s, that buries the gateway's own log. Its warnings
        # still show; ``--log-level debug`` shows everything.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _local_worker(port: int, registry):
    """The local vLLM worker, supervised (restarted whenever it dies or stops answering;
    its restarts are counted on ``registry``, which the gateway's ``/metrics`` serves),
    for the block; exits 1 if it does not start."""
    from prometheus_client import Counter

    from lengthwise.worker.process import WorkerStartError, free_port, local_worker

    restarts = Counter(
        "lengthwise_local_worker_restarts",
        "Restarts of the local vLLM worker that `lengthwise serve` supervises, by reason: "
        "exited (it died: crash, out-of-memory kill) or unhealthy (it stopped answering).",
        ["reason"], registry=registry)
    for reason in ("exited", "unhealthy"):
        restarts.labels(reason)  # exported as 0 from the start, so a rate() sees the first
    typer.echo("No workers configured: preparing SmolLM2-135M-Instruct (once) ...")
    with contextlib.ExitStack() as stack:
        try:
            worker = stack.enter_context(local_worker(
                say=typer.echo, supervised=True,
                on_restart=lambda reason: restarts.labels(reason).inc(),
                port=port, edt_metrics_port=free_port()))
        except WorkerStartError as exc:
            typer.echo(f"error: the local vLLM worker did not start: {exc}", err=True)
            raise typer.Exit(1) from None
        yield worker
