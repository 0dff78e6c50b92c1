"""Append-only JSON Lines log of finished requests: prediction next to the actual length.

One line per request, written when it finishes (or fails), so the simulator
can replay arrivals and the predictor can learn from real lengths later.
Times: ``arrival_unix`` is wall-clock seconds since the epoch; durations are
seconds from arrival.

The log rotates by size, as ``logging.handlers.RotatingFileHandler`` does: once the
file reaches ``max_bytes`` it becomes ``<path>.1`` (``.1`` becomes ``.2`` and so on,
the oldest beyond ``backups`` is deleted) and a new file starts. Every file holds whole
records only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    arrival_unix: float
    endpoint: str
    model: str
    stream: bool
    n: int
    max_tokens: int | None
    policy: str
    status: str  # "ok", "client_disconnected", "upstream_error", "timeout", or an HTTP code
    http_status: int
    prompt_tokens: int | None
    predicted_mean: float | None
    predicted_p50: float | None
    predicted_p90: float | None
    predicted_tokens: float | None  # the point estimate the queue ranked by (all choices)
    completion_tokens: int | None
    finish_reasons: list[str | None]
    worker: str | None
    attempts: int
    queue_wait_s: float | None
    ttft_s: float | None
    e2e_s: float
    #: seconds from arrival to entering the gateway's queue (the awaited length prediction);
    #: lets a replay start each request at its true arrival. None in logs from older versions.
    queue_entry_s: float | None = None


_FIELD_NAMES = tuple(f.name for f in fields(RequestRecord))

#: Rotated files kept by default (the gateway's ``request_log_backups``).
DEFAULT_BACKUPS = 5


class RequestLog:
    """Appends records to a file, rotating it by size; a ``None`` path makes every call a
    no-op. ``max_bytes=None`` never rotates."""

    def __init__(self, path: Path | None, max_bytes: int | None = None,
                 backups: int = DEFAULT_BACKUPS) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if backups < 0:
            raise ValueError("backups must be non-negative")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[str] | None = None
        self._size = 0

    def open(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        # Line-buffered: each record reaches the OS as one write, so a crash
        # leaves whole lines behind and concurrent readers see complete records.
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (held open; closed in close())
        self._size = self._file.tell()

    def write(self, record: RequestRecord) -> None:
        if self._file is None:
            return
        # A flat record: read the fields directly (``dataclasses.asdict`` deep-copies every
        # value, several times the cost of the dump itself, on the event loop).
        row = {name: getattr(record, name) for name in _FIELD_NAMES}
        line = json.dumps(row, separators=(",", ":")) + "\n"
        self._file.write(line)
        self._size += len(line.encode("utf-8"))
        if self.max_bytes is not None and self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        assert self.path is not None
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self._backup(i)
                if older.exists():
                    os.replace(older, self._backup(i + 1))
            os.replace(self.path, self._backup(1))
        self.open()

    def _backup(self, i: int) -> Path:
        assert self.path is not None
        return self.path.with_name(f"{self.path.name}.{i}")

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash mid-write) off an existing log, so the next
    record starts a line of its own instead of joining it into one unreadable line."""
    try:
        fh = open(path, "rb+")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 4096)
            fh.seek(start)
            chunk = fh.read(pos - start)
            newline = chunk.rfind(b"\n")
            if newline != -1:
                keep = start + newline + 1
                break
            pos = start
        else:
            keep = 0
        if keep < end:
            log.warning("request log %s ended in a half-written record (%d bytes): dropped",
                        path, end - keep)
            fh.truncate(keep)


class MalformedRequestLog(ValueError):
    """A line of a request log, other than a torn last one, is not a JSON record."""


def read_request_log(path: Path) -> list[dict]:
    """All records of one log file.

    Only a torn last line (no newline: the writer stopped in the middle of it) is
    skipped; any other line that is not a JSON object raises ``MalformedRequestLog``
    naming the file and line, since silently dropping records would bias whatever is
    computed from the log."""
    records = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        lines = fh.readlines()
    for number, line in enumerate(lines, start=1):
        torn = number == len(lines) and not line.endswith("\n")
        if not line.strip():
            continue  # holds no record, so none is lost
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn:
                continue
            raise MalformedRequestLog(f"{path}:{number}: not a JSON record ({exc})") from None
        if not isinstance(record, dict):
            raise MalformedRequestLog(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records
