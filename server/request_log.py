"""Append-only JSON Lines log of finished requests: prediction next to the actual length.

One line per request, written when it finishes (or fails), so the simulator
can replay arrivals and the predictor can learn from real lengths later.
Times: ``arrival_unix`` is wall-clock seconds since the epoch; durations are
seconds from arrival.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO


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


class RequestLog:
    """Appends records to a file; a ``None`` path makes every call a no-op."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def open(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered: each record reaches the OS as one write, so a crash
        # leaves whole lines behind and concurrent readers see complete records.
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (held open; closed in close())

    def write(self, record: RequestRecord) -> None:
        if self._file is None:
            return
        # A flat record: read the fields directly (``dataclasses.asdict`` deep-copies every
        # value, several times the cost of the dump itself, on the event loop).
        row = {name: getattr(record, name) for name in _FIELD_NAMES}
        self._file.write(json.dumps(row, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def read_request_log(path: Path) -> list[dict]:
    """All complete records of a log (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
