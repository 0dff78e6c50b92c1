"""The local worker's supervisor, on a stand-in worker process: a worker killed (as by the
out-of-memory killer) or gone silent is restarted on its port, with backoff, and logged."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import STANDIN, _child_env, wait_until

from lengthwise.worker.process import WorkerConfig, WorkerProcess, free_port, is_healthy
from lengthwise.worker.supervisor import RestartPolicy, WorkerSupervisor, describe_exit


@dataclass(frozen=True)
class StandinWorkerConfig(WorkerConfig):
    """A ``WorkerConfig`` whose process is the stand-in vLLM server (starts in a second)."""

    def command(self) -> list[str]:
        return [sys.executable, str(STANDIN), "--port", str(self.port), "--model", "standin"]

    def environment(self) -> dict[str, str]:
        return _child_env()


FAST = RestartPolicy(check_interval_s=0.1, check_timeout_s=0.3, failed_checks=3,
                     initial_backoff_s=0.2, max_backoff_s=1.0)


def _worker(tmp_path: Path) -> WorkerProcess:
    return WorkerProcess(StandinWorkerConfig(model_path=Path("unused"), port=free_port(),
                                             log_path=tmp_path / "worker.log",
                                             startup_timeout_s=30))


def test_a_killed_worker_is_restarted_logged_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lengthwise.worker.supervisor")
    worker = _worker(tmp_path)
    worker.start()
    reasons: list[str] = []
    supervisor = WorkerSupervisor(worker, FAST, on_restart=reasons.append)
    supervisor.start()
    try:
        for expected in (1, 2):
            first_pid = worker.pid
            os.kill(first_pid, signal.SIGKILL)
            assert wait_until(lambda n=expected, old=first_pid: supervisor.restarts == n
                              and worker.running() and worker.pid != old
                              and is_healthy(worker.base_url), 30)
        assert reasons == ["exited", "exited"]
        assert "killed by SIGKILL (9)" in caplog.text
        assert httpx.get(worker.base_url + "/v1/models", timeout=5).status_code == 200
    finally:
        supervisor.stop()
    assert not worker.running()
    assert not is_healthy(worker.base_url, 0.5)  # stop() stopped the worker too


def test_a_worker_that_stops_answering_is_restarted(tmp_path):
    worker = _worker(tmp_path)
    worker.start()
    reasons: list[str] = []
    supervisor = WorkerSupervisor(worker, FAST, on_restart=reasons.append)
    supervisor.start()
    try:
        pid = worker.pid
        httpx.post(worker.base_url + "/control", json={"stall_health": True}, timeout=5)
        assert wait_until(lambda: reasons == ["unhealthy"] and worker.pid != pid
                          and is_healthy(worker.base_url), 30)
    finally:
        supervisor.stop()


def test_exits_are_described_for_people():
    assert describe_exit(-9) == "killed by SIGKILL (9)"
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(None) == "still running"


def test_restarts_back_off(tmp_path):
    """A worker that dies at once each time is restarted ever more slowly."""
    worker = _worker(tmp_path)
    worker.start()
    supervisor = WorkerSupervisor(worker, FAST)
    supervisor.start()
    try:
        times = []
        for _ in range(3):
            pid = worker.pid
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            assert wait_until(lambda old=pid: worker.pid not in (None, old)
                              and is_healthy(worker.base_url), 30)
            times.append(time.monotonic() - killed)
        # Backoffs 0.2, 0.4, 0.8 s on top of the same start-up time.
        assert times[2] - times[0] >= 0.45, times
    finally:
        supervisor.stop()


def test_local_worker_starts_supervises_and_stops_the_one_worker(tmp_path, monkeypatch):
    """``local_worker`` (what ``serve``, ``lengthwise worker`` and the benchmarks use):
    supervised, a killed worker comes back; leaving the block stops it."""
    from lengthwise.worker import process

    made: list[WorkerConfig] = []

    def standin_config(**settings) -> WorkerConfig:
        settings.pop("port", None)
        made.append(StandinWorkerConfig(model_path=Path("unused"), port=free_port(),
                                        log_path=tmp_path / "worker.log",
                                        startup_timeout_s=30, **settings))
        return made[-1]

    monkeypatch.setattr(process, "local_worker_config", standin_config)
    reasons: list[str] = []
    with process.local_worker(say=lambda _line: None, supervised=True,
                              on_restart=reasons.append, max_num_seqs=16) as worker:
        assert made[0].max_num_seqs == 16 and is_healthy(worker.base_url)
        os.killpg(worker.pid, signal.SIGKILL)
        assert wait_until(lambda: reasons and is_healthy(worker.base_url), timeout_s=30)
    assert reasons[0] == "exited" and not worker.running()
    assert not is_healthy(worker.base_url, timeout_s=0.5)


def test_worker_settings_become_vllm_flags() -> None:
    plain = WorkerConfig(model_path=Path("m")).command()
    assert "--no-enable-prefix-caching" not in plain
    assert "--num-gpu-blocks-override" not in plain
    cmd = WorkerConfig(model_path=Path("m"), prefix_caching=False, num_gpu_blocks=300,
                       extra_args=("--seed", "1")).command()
    assert cmd[-5:] == ["--no-enable-prefix-caching", "--num-gpu-blocks-override", "300",
                        "--seed", "1"]
