"""``lengthwise bench live`` and ``lengthwise bench overhead``: measurements against real vLLM."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@contextmanager
def _worker(url: str | None, model: str | None) -> Iterator[tuple[str, str]]:
    """An existing worker (``--worker``), or a fresh local one started for the run."""
    if url:
        import httpx

        served = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=10).json()["data"]
        yield url.rstrip("/"), model or served[0]["id"]
        return
    from server.local_model import SERVED_MODEL_NAME, prepare_local_model
    from server.worker_process import WorkerConfig, WorkerProcess, free_port

    local = prepare_local_model()
    # Prefix caching off: every arm replays the same prompts, and a warm cache
    # would favour whichever arm runs later.
    config = WorkerConfig(model_path=local.path, port=free_port(),
                          extra_args=("--no-enable-prefix-caching",))
    typer.echo(f"starting a local vLLM CPU worker on {config.base_url} ...")
    with WorkerProcess(config) as worker:
        yield worker.base_url, SERVED_MODEL_NAME


@app.command()
def live(
    worker: str | None = typer.Option(
        None, help="A running vLLM worker (with --scheduling-policy priority); default: "
        "start a local one."),
    model: str | None = typer.Option(None, help="Served model name (default: the worker's)."),
    requests: int = typer.Option(160, help="Requests per arm."),
    arrivals: str = typer.Option("poisson", help="poisson or burst."),
    rate: float = typer.Option(2.0, help="Poisson arrival rate (requests/s)."),
    max_tokens: int = typer.Option(256, help="max_tokens of every request."),
    max_sequences: int = typer.Option(4, help="Gateway admission limit per worker."),
    sjf_policy: str = typer.Option("sjf-aged", help="Policy of the sjf arm: sjf or sjf-aged."),
    aging_s_per_token: float = typer.Option(0.05, help="sjf-aged aging rate."),
    seed: int = typer.Option(1234),
    out_dir: Path | None = typer.Option(None, help="Report folder (default reports/)."),
) -> None:
    """Plain vLLM vs. gateway fcfs vs. gateway sjf on real prompts; writes reports/live_bench.json."""
    from server.live_bench import Workload, run_live_bench

    w = Workload(num_requests=requests, arrivals=arrivals, rate_per_s=rate,
                 max_tokens=max_tokens, seed=seed, max_sequences_per_worker=max_sequences,
                 sjf_policy=sjf_policy, aging_s_per_token=aging_s_per_token)
    with _worker(worker, model) as (url, name):
        report = run_live_bench(url, name, w, out_dir, log=typer.echo)
    typer.echo(f"targets: {report['targets']}")


@app.command()
def overhead(
    worker: str | None = typer.Option(None, help="A running vLLM worker; default: start one."),
    model: str | None = typer.Option(None),
    samples: int = typer.Option(200, help="Request pairs (direct, via gateway)."),
    out_dir: Path | None = typer.Option(None),
) -> None:
    """Latency the gateway adds per request at low load; writes reports/gateway_overhead.json."""
    from server.live_bench import measure_overhead

    with _worker(worker, model) as (url, name):
        measure_overhead(url, name, samples, out_dir, log=typer.echo)


@app.command()
def soak(
    worker: str | None = typer.Option(None, help="A running vLLM worker; default: start one."),
    model: str | None = typer.Option(None),
    duration_s: float = typer.Option(1800.0, help="Soak length in seconds (30 min by default)."),
    load_fraction: float = typer.Option(0.8, help="Offered load as a fraction of capacity."),
    calibrate_s: float = typer.Option(60.0, help="Capacity calibration length."),
    max_tokens: int = typer.Option(64, help="max_tokens of every request."),
    max_sequences: int = typer.Option(8, help="Gateway admission limit per worker."),
    out_dir: Path | None = typer.Option(None),
) -> None:
    """Gateway at 80% of capacity for a long time: errors and RSS slope -> reports/soak.json."""
    from server.soak import SoakSettings, run_soak

    s = SoakSettings(duration_s=duration_s, load_fraction=load_fraction, calibrate_s=calibrate_s,
                     max_tokens=max_tokens, max_sequences_per_worker=max_sequences)
    with _worker(worker, model) as (url, name):
        run_soak(url, name, s, out_dir, log=typer.echo)
