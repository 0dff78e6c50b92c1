"""``lengthwise worker``: run a local vLLM CPU worker (SmolLM2-135M-Instruct) in the foreground."""

from __future__ import annotations

from pathlib import Path

import typer

from lengthwise.common.cpu_worker import CPU_BLOCK_SIZE
from lengthwise.worker.process import EDT_LOGITS_PROCESSOR_V1, WorkerConfig

_DEFAULT = WorkerConfig(model_path=Path("."))


def worker(
    port: int = typer.Option(_DEFAULT.port, help="Port the worker listens on."),
    max_num_seqs: int = typer.Option(_DEFAULT.max_num_seqs,
                                     help="Sequences vLLM decodes at once."),
    kv_cache_gib: int = typer.Option(_DEFAULT.kv_cache_space_gib,
                                     help="VLLM_CPU_KVCACHE_SPACE: GiB of KV cache."),
    num_gpu_blocks: int | None = typer.Option(
        _DEFAULT.num_gpu_blocks, help=f"--num-gpu-blocks-override: KV blocks ({CPU_BLOCK_SIZE} "
        "tokens each on CPU) instead of the GiB budget, for a memory-bound worker."),
    prefix_caching: bool = typer.Option(
        _DEFAULT.prefix_caching, help="vLLM prefix caching; benchmarks that replay the same "
        "prompts in several arms turn it off so no arm finds the cache warm."),
    edt: bool = typer.Option(True, help="Load the EDT logits processor."),
    edt_metrics_port: int | None = typer.Option(
        _DEFAULT.edt_metrics_port,
        help="Port of the EDT applied-temperature metrics (default: not served)."),
    compile_graphs: bool = typer.Option(
        not _DEFAULT.enforce_eager, "--compile", help="Compile graphs: start-up takes "
        "minutes, steps are faster; for workers that run for hours (profiling)."),
    log: Path | None = typer.Option(None, help="Worker log file."),
) -> None:
    """Run one local vLLM CPU worker until Ctrl-C or SIGTERM, restarting it if it dies."""
    from lengthwise.worker.process import COMPILED_STARTUP_TIMEOUT_S, run_supervised

    run_supervised(
        say=lambda line: typer.echo(line, err=False),
        port=port, max_num_seqs=max_num_seqs, kv_cache_space_gib=kv_cache_gib,
        num_gpu_blocks=num_gpu_blocks, prefix_caching=prefix_caching,
        enforce_eager=not compile_graphs,
        startup_timeout_s=COMPILED_STARTUP_TIMEOUT_S if compile_graphs
        else _DEFAULT.startup_timeout_s,
        logits_processors=(EDT_LOGITS_PROCESSOR_V1,) if edt else (),
        edt_metrics_port=edt_metrics_port if edt else None, log_path=log,
    )
