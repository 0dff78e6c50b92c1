"""Keep one local vLLM worker running: restart it when it dies or stops answering.

A worker process can die at any time (the kernel's out-of-memory killer, a crash in
the engine) or hang. ``WorkerSupervisor`` watches it from a background thread and
restarts it on the same port with exponential backoff, logging how it ended (exit code
or signal) and the tail of its log, and calling ``on_restart(reason)`` so the caller
can count restarts (``lengthwise serve`` exports them as
``lengthwise_local_worker_restarts_total``). The gateway in front of it needs nothing
from here: its health checks take the worker out while it is down and put it back
once it generates again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lengthwise.worker.process import WorkerProcess, WorkerStartError, is_healthy, read_tail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    check_interval_s: float = 2.0
    """How often the process and its ``/health`` are checked."""
    check_timeout_s: float = 10.0
    """A ``/health`` slower than this counts as failed (a busy engine answers well within)."""
    failed_checks: int = 3
    """``/health`` failures in a row after which a live but silent worker is restarted."""
    initial_backoff_s: float = 1.0
    """Wait before the first restart; doubled after each restart that does not last."""
    max_backoff_s: float = 60.0
    """Longest wait between restarts."""
    stable_after_s: float = 300.0
    """A worker that has run this long since its restart resets the backoff."""


def describe_exit(returncode: int | None) -> str:
    """How a process ended, for people: its exit code, or the signal that killed it."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name} ({-returncode})"
    return f"exited with code {returncode}"


class WorkerSupervisor:
    """Restarts ``worker`` (already started) whenever it dies or stops answering."""

    def __init__(self, worker: WorkerProcess, policy: RestartPolicy | None = None,
                 on_restart: Callable[[str], None] = lambda _reason: None) -> None:
        self.worker = worker
        self.policy = policy or RestartPolicy()
        self.on_restart = on_restart
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vllm-worker-supervisor",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, and stop the worker (also one being restarted right now)."""
        self._stop.set()
        while True:
            # A restart in progress is blocked in ``start()``: stopping the process makes
            # that return at once, and the thread then sees the stop request.
            self.worker.stop()
            if not self._thread.is_alive():
                return
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        backoff = self.policy.initial_backoff_s
        started_at = time.monotonic()
        failed = 0
        while not self._stop.wait(self.policy.check_interval_s):
            if self.worker.running():
                healthy = is_healthy(self.worker.base_url, self.policy.check_timeout_s)
                if self._stop.is_set():
                    return
                failed = 0 if healthy else failed + 1
                if failed < self.policy.failed_checks:
                    if time.monotonic() - started_at >= self.policy.stable_after_s:
                        backoff = self.policy.initial_backoff_s
                    continue
                reason, how = "unhealthy", (f"did not answer /health {failed} times in a "
                                            f"row; killing it")
            elif self._stop.is_set():
                return
            else:
                reason, how = "exited", describe_exit(self.worker.returncode)
            log.error("local vLLM worker %s (pid %s) %s; restarting it in %.0f s. "
                      "Tail of its log %s:\n%s", self.worker.base_url, self.worker.pid, how,
                      backoff, self.worker.log_path, read_tail(self.worker.log_path, 3000))
            self.restarts += 1
            self.on_restart(reason)
            self.worker.stop()  # the whole process group: no engine core is left behind
            if self._stop.wait(backoff):
                return
            backoff = min(self.policy.max_backoff_s, backoff * 2)
            failed = 0
            try:
                self.worker.start()
            except WorkerStartError as exc:
                log.error("local vLLM worker did not come back: %s", exc)
                continue  # the next check sees it is not running and tries again
            started_at = time.monotonic()
            log.warning("local vLLM worker %s is back (pid %s) after restart %d",
                        self.worker.base_url, self.worker.pid, self.restarts)
