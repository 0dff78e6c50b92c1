"""Start, watch and stop one local vLLM CPU worker as a child process.

``WorkerConfig`` holds every setting of a worker and builds its vLLM command line;
``local_worker`` is the one way to start (and optionally supervise) the local SmolLM2
worker, used by ``lengthwise serve``, ``lengthwise worker`` (``run_supervised``) and the
benchmarks (``worker_for``, which reuses a running worker when given its URL). The worker is vLLM's own OpenAI server
(``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script
does not start on this CPU build), run in its own process group so that
stopping it also stops the engine-core process vLLM forks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from lengthwise.worker.edt.temperature_metrics import HOST_ENV as EDT_METRICS_HOST_ENV
from lengthwise.worker.edt.temperature_metrics import PORT_ENV as EDT_METRICS_PORT_ENV
from lengthwise.worker.local_model import SERVED_MODEL_NAME

# The V1-runner EDT processor: the CPU build of vLLM runs the V1 model runner.
EDT_LOGITS_PROCESSOR_V1 = "lengthwise.worker.edt.vllm_v1:EntropyDynamicTemperatureLogitsProcessor"
# The Model Runner V2 processor, for GPU workers started by operators.
EDT_LOGITS_PROCESSOR_MRV2 = "lengthwise.worker.edt.vllm_mrv2:EntropyDynamicTemperatureLogitsProcessorV2"

REPO_ROOT = Path(__file__).resolve().parents[2]

#: vLLM's default ``--max-num-batched-tokens`` (its per-step token budget).
VLLM_DEFAULT_BATCHED_TOKENS = 2048
#: Start-up allowance of a worker that compiles graphs (``enforce_eager=False``).
COMPILED_STARTUP_TIMEOUT_S = 600.0


class WorkerStartError(RuntimeError):
    """The worker exited or did not become healthy in time; carries its log tail."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- worker log tail ---\n{log_tail}")
        self.log_tail = log_tail


@dataclass(frozen=True)
class WorkerConfig:
    """Everything that decides how a local vLLM CPU worker is started."""

    model_path: Path
    """Hugging Face model folder (see ``lengthwise.worker.local_model``)."""
    served_model_name: str = SERVED_MODEL_NAME
    """Model name clients send; also what ``/v1/models`` reports."""
    host: str = "127.0.0.1"
    port: int = 8100
    max_model_len: int = 4096
    """Context length; SmolLM2 supports 8192 but 4096 keeps the KV cache small."""
    max_num_seqs: int = 64
    """Upper bound on concurrently decoded sequences inside the worker."""
    kv_cache_space_gib: int = 2
    """``VLLM_CPU_KVCACHE_SPACE``: CPU memory reserved for the KV cache."""
    num_gpu_blocks: int | None = None
    """``--num-gpu-blocks-override``: this many KV blocks (``CPU_BLOCK_SIZE`` tokens each
    on CPU) instead of what ``kv_cache_space_gib`` holds, for a memory-bound worker."""
    prefix_caching: bool = True
    """vLLM's prefix caching (its default); benchmarks that replay the same prompts in
    several arms turn it off so no arm finds the cache warm."""
    omp_threads_bind: str = "nobind"
    """``VLLM_CPU_OMP_THREADS_BIND``: ``nobind`` leaves threads unpinned so the
    worker shares a small machine with the gateway; ``auto`` or a CPU list
    (``"0-7"``) pins them, which suits a dedicated host."""
    chunked_prefill: bool = False
    """Off by default: vLLM 0.32's CPU runner crashes the whole engine when a
    request with a ``seed`` has its prefill split across steps (the CPU torch
    generator has no offset to rewind). With it off, ``max_num_batched_tokens``
    is raised to ``max_model_len`` so any admissible prompt prefills in one step."""
    scheduling_policy: str = "priority"
    """vLLM's queue policy; ``priority`` lets the gateway's rank hold inside it."""
    enforce_eager: bool = True
    """Skip graph compilation: start-up ~35 s instead of ~2.5 min on CPU."""
    logits_processors: tuple[str, ...] = (EDT_LOGITS_PROCESSOR_V1,)
    """Fully qualified ``module:Class`` names passed to ``--logits-processors``."""
    additional_config: dict | None = None
    """JSON for ``--additional-config``; ``{"edt": {"theta": .., "n": ..}}`` sets
    the worker-wide EDT default for requests that do not say otherwise."""
    extra_args: tuple[str, ...] = ()
    """Further vLLM command-line arguments, appended last."""
    log_path: Path | None = None
    """Where the worker's stdout/stderr go; a temporary file when ``None``."""
    startup_timeout_s: float = 240.0
    """Time allowed to become healthy; graph compilation (``enforce_eager=False``) needs
    ``COMPILED_STARTUP_TIMEOUT_S``."""
    extra_env: dict[str, str] = field(default_factory=dict)
    edt_metrics_port: int | None = None
    """Where the EDT processor serves ``lengthwise_edt_applied_temperature``
    (``lengthwise.worker.edt.temperature_metrics``), on ``host``; ``None`` = not served."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def max_num_batched_tokens(self) -> int | None:
        """``--max-num-batched-tokens``: with chunked prefill off, vLLM's default per-step
        budget raised to ``max_model_len`` (so any admissible prompt prefills in one
        step); ``None`` leaves vLLM's own."""
        if self.chunked_prefill:
            return None
        return max(self.max_model_len, VLLM_DEFAULT_BATCHED_TOKENS)

    @property
    def edt_metrics_url(self) -> str | None:
        """The EDT histogram's scrape URL, or ``None`` when it is not served."""
        if self.edt_metrics_port is None or not self.logits_processors:
            return None
        return f"http://{self.host}:{self.edt_metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_path),
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--scheduling-policy",
            self.scheduling_policy,
            # No --disable-log-stats: in vLLM 0.32 it also turns off every
            # vllm:* Prometheus metric, which the gateway re-exports (KV cache).
        ]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if not self.chunked_prefill:
            cmd += [
                "--no-enable-chunked-prefill",
                "--max-num-batched-tokens",
                str(self.max_num_batched_tokens),
            ]
        if self.logits_processors:
            cmd += ["--logits-processors", *self.logits_processors]
        if self.additional_config:
            cmd += ["--additional-config", json.dumps(self.additional_config)]
        if not self.prefix_caching:
            cmd.append("--no-enable-prefix-caching")
        if self.num_gpu_blocks is not None:
            cmd += ["--num-gpu-blocks-override", str(self.num_gpu_blocks)]
        cmd += list(self.extra_args)
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_space_gib))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", self.omp_threads_bind)
        # The processor classes live in this repository; make them importable
        # whatever the caller's working directory is.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        # Nothing can be fetched from a model hub here; fail fast instead of retrying.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        # The port comes from this config only, never from the caller's environment.
        # Of the worker's processes only the one that builds the logits processors
        # (vLLM's model runner) binds it; the API server and engine core never do.
        env.pop(EDT_METRICS_PORT_ENV, None)
        if self.edt_metrics_port is not None:
            env[EDT_METRICS_PORT_ENV] = str(self.edt_metrics_port)
            env[EDT_METRICS_HOST_ENV] = self.host
        env.update(self.extra_env)
        return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def read_tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"


class WorkerProcess:
    """One running vLLM worker. Use as a context manager or call start()/stop()."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.log_path = config.log_path or Path(
            os.environ.get("TMPDIR", "/tmp")
        ) / f"lengthwise-vllm-{config.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """How the process ended (negative: the signal that killed it); ``None`` while it
        runs or when it was never started."""
        return self._proc.returncode if self._proc is not None else None

    def start(self) -> None:
        if self.running():
            return
        if is_healthy(self.base_url, timeout_s=0.5):
            raise WorkerStartError(
                f"something already answers on {self.base_url}; pick another port", ""
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")  # append: a restart keeps the previous crash log
        try:
            self._proc = subprocess.Popen(
                self.config.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.config.environment(),
                start_new_session=True,  # own process group: stop() reaches the engine core
            )
        finally:
            log.close()
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None:
                raise WorkerStartError("vLLM worker stopped during start-up", "")
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise WorkerStartError(
                    f"vLLM worker exited with code {code} during start-up",
                    read_tail(self.log_path),
                )
            if is_healthy(self.base_url):
                return
            time.sleep(1.0)
        tail = read_tail(self.log_path)
        self.stop()
        raise WorkerStartError(
            f"vLLM worker not healthy after {self.config.startup_timeout_s:.0f} s", tail
        )

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # Its own session (start_new_session): the group id is the leader's pid, and the
        # group outlives a leader that was killed, with vLLM's engine core in it.
        pgid = proc.pid
        if proc.poll() is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The engine core may outlive the API server by a moment; make sure the
        # whole group is gone so its memory and cores are released.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_worker_config(**settings: Any) -> WorkerConfig:
    """``WorkerConfig`` of the local SmolLM2 worker (converted once, see
    ``lengthwise.worker.local_model``) with ``settings`` (``WorkerConfig`` fields); no
    ``port`` (or 0) picks a free one."""
    from lengthwise.worker.local_model import prepare_local_model

    local = prepare_local_model()
    port = settings.pop("port", None) or free_port()
    return WorkerConfig(model_path=local.path, served_model_name=local.name, port=port,
                        **settings)


@contextmanager
def local_worker(*, say=print, supervised: bool = False,
                 on_restart: Callable[[str], None] | None = None,
                 **settings: Any) -> Iterator[WorkerProcess]:
    """Start the local vLLM CPU worker (``local_worker_config(**settings)``) for the block
    and stop it after: the one way ``lengthwise serve``, ``lengthwise worker`` and the
    benchmarks start a worker. ``supervised``: a ``WorkerSupervisor`` restarts it whenever
    it dies or stops answering, calling ``on_restart(reason)``. Raises
    ``WorkerStartError`` if it does not come up."""
    config = local_worker_config(**settings)
    worker = WorkerProcess(config)
    say(f"starting a local vLLM CPU worker on {config.base_url} (about a minute); EDT "
        f"temperature metrics at {config.edt_metrics_url or 'off'} ...")
    supervisor = None
    try:
        worker.start()
        if supervised:
            from lengthwise.worker.supervisor import WorkerSupervisor

            supervisor = WorkerSupervisor(
                worker, on_restart=on_restart or (lambda _reason: None))
            supervisor.start()
        yield worker
    finally:
        if supervisor is not None:
            supervisor.stop()  # stops the worker too, also one being restarted
        else:
            worker.stop()


def run_supervised(*, say=print, **settings: Any) -> None:
    """Run the local worker (``settings``: ``WorkerConfig`` fields) in the foreground until
    SIGTERM or Ctrl-C; restart it if it dies or stops answering
    (``lengthwise.worker.supervisor``), so a long-lived development or benchmark worker
    stays available."""
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Block first so a signal arriving during start-up is not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with local_worker(say=say, supervised=True,
                      on_restart=lambda reason: say(f"vLLM worker {reason}; restarting"),
                      **settings) as worker:
        say(f"ready {worker.base_url}: vLLM worker {worker.config.served_model_name} (pid "
            f"{worker.pid}, log {worker.log_path}); EDT metrics at "
            f"{worker.config.edt_metrics_url or 'off'}")
        signal.sigwait(stop_signals)


def served_model(base_url: str, timeout_s: float = 10.0) -> str:
    """The first model a running worker serves (its ``/v1/models``)."""
    with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout_s) as resp:
        return str(json.load(resp)["data"][0]["id"])


@contextmanager
def worker_for(url: str | None, model: str | None = None, *, say=print,
               **settings: Any) -> Iterator[tuple[str, str]]:
    """``(base_url, served model)`` of a running worker (``url``), or of the local worker
    started for the block with ``settings`` (``WorkerConfig`` fields, see
    ``local_worker``) and stopped after: what every benchmark calls."""
    if url:
        url = url.rstrip("/")
        yield url, model or served_model(url)
        return
    with local_worker(say=say, **settings) as worker:
        yield worker.base_url, worker.config.served_model_name
