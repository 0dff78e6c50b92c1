"""``lengthwise worker``: run a local vLLM CPU worker (SmolLM2-135M-Instruct) in the foreground."""

from __future__ import annotations

from pathlib import Path

import typer

from lengthwise.worker.process import EDT_LOGITS_PROCESSOR_V1, WorkerConfig

_DEFAULT = WorkerConfig(model_path=Path("."))


def worker(
    port: int = typer.Option(_DEFAULT.port, help="Port the worker listens on."),
    max_num_seqs: int = typer.Option(_DEFAULT.max_num_seqs,
                                     help="Sequences vLLM decodes at once."),
    kv_cache_gib: int = typer.Option(_DEFAULT.kv_cache_space_gib,
                                     help="VLLM_CPU_KVCACHE_SPACE: GiB of KV cache."),
    num_gpu_blocks: int | None = typer.Option(
        None, help="--num-gpu-blocks-override: KV blocks (16 tokens each) instead of the "
        "GiB budget, for a memory-bound worker."),
    prefix_caching: bool = typer.Option(
        True, help="vLLM prefix caching; benchmarks that replay the same prompts in several "
        "arms turn it off so no arm finds the cache warm."),
    edt: bool = typer.Option(True, help="Load the EDT logits processor."),
    edt_metrics_port: int | None = typer.Option(
        None, help="Port of the EDT applied-temperature metrics (default: not served)."),
    compile_graphs: bool = typer.Option(
        False, "--compile", help="Compile graphs: start-up takes minutes, steps are faster; "
        "for workers that run for hours (profiling)."),
    log: Path | None = typer.Option(None, help="Worker log file."),
) -> None:
    """Run one local vLLM CPU worker until Ctrl-C or SIGTERM, restarting it if it dies."""
    from lengthwise.worker.local_model import prepare_local_model
    from lengthwise.worker.process import run_supervised

    extra: list[str] = []
    if not prefix_caching:
        extra.append("--no-enable-prefix-caching")
    if num_gpu_blocks is not None:
        extra += ["--num-gpu-blocks-override", str(num_gpu_blocks)]
    model = prepare_local_model()
    config = WorkerConfig(
        model_path=model.path, served_model_name=model.name, port=port,
        max_num_seqs=max_num_seqs, kv_cache_space_gib=kv_cache_gib,
        enforce_eager=not compile_graphs, startup_timeout_s=600 if compile_graphs else 240,
        logits_processors=(EDT_LOGITS_PROCESSOR_V1,) if edt else (),
        edt_metrics_port=edt_metrics_port if edt else None,
        extra_args=tuple(extra), log_path=log,
    )
    run_supervised(config, say=lambda line: typer.echo(line, err=False))
