"""Trace loaders: every supported format becomes a list of :class:`SimRequest`.

Supported inputs (``load_trace`` picks by content, not only by extension):

* Azure LLM inference trace 2023 CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens``.
* Mooncake JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``
  (ids of 512-token prompt blocks: equal ids mean a shared prefix).
* Generic CSV or JSONL: ``arrival_time_s`` or ``arrival_time_ns``, ``input_tokens``,
  ``output_tokens``, optional ``prompt_text``, ``model``, ``predicted_tokens``.
* The gateway's JSONL request log (``server/request_log.py``): one record per
  finished request (``arrival_unix``, ``prompt_tokens``, ``predicted_tokens``,
  ``completion_tokens``); records whose ``status`` is not ``ok`` are skipped.

Arrival times are shifted so the first request arrives at ``t = 0`` seconds.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path

from server.request_log import RequestRecord as LogRecord


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request to replay. Times in seconds, lengths in tokens."""

    request_id: str
    arrival_time: float
    prompt_tokens: int
    output_tokens: int
    #: the length the scheduler ranks by; ``None`` until a prediction source fills it
    predicted_tokens: float | None = None
    prompt_text: str | None = None
    model: str | None = None
    #: seconds between the client's arrival and the request entering the gateway's
    #: queue (the live gateway predicts first); latencies still count from ``arrival_time``
    gateway_delay_s: float = 0.0
    #: ids of the prompt's leading blocks of ``prefix_block_tokens`` tokens; equal ids mean
    #: equal content (Mooncake's ``hash_ids``), so the engine's prefix cache can share them
    prefix_hashes: tuple[int, ...] = ()
    prefix_block_tokens: int = 0

    def prefix_keys(self, block_size: int) -> tuple[tuple[int, int], ...]:
        """Content keys of the prompt's full engine blocks that lie in a hashed prefix block."""
        span = self.prefix_block_tokens
        if not self.prefix_hashes or span <= 0 or span % block_size:
            return ()
        per = span // block_size
        n = min(self.prompt_tokens // block_size, len(self.prefix_hashes) * per)
        return tuple((self.prefix_hashes[i // per], i % per) for i in range(n))


class TraceFormatError(ValueError):
    """The file is not in any supported trace format."""


def load_trace(path: str | Path, limit: int | None = None) -> list[SimRequest]:
    """Load any supported trace format; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError(f"trace file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = _read_jsonl(path)
    elif suffix == ".csv":
        records = _read_csv(path)
    else:
        raise TraceFormatError(f"unsupported trace extension {suffix!r} (use .csv or .jsonl)")
    first = next(records, None)
    if first is None:
        raise TraceFormatError(f"trace {path} is empty")
    parser = _pick_parser(first, path)
    requests = []
    for i, rec in enumerate(_chain([first], records)):
        if limit is not None and i >= limit:
            break
        try:
            parsed = parser(i, rec)
        except (KeyError, ValueError, TypeError) as exc:
            raise TraceFormatError(f"{path}: record {i + 1}: {exc!r}") from exc
        if parsed is not None:
            requests.append(parsed)
    return normalise(requests)


def normalise(requests: list[SimRequest]) -> list[SimRequest]:
    """Sort by arrival (stable) and shift so the first arrival is at t = 0."""
    if not requests:
        return []
    requests = sorted(requests, key=lambda r: r.arrival_time)
    t0 = requests[0].arrival_time
    if t0 == 0:
        return requests
    return [replace(r, arrival_time=r.arrival_time - t0) for r in requests]


def _chain(head: list[dict], tail: Iterator[dict]) -> Iterator[dict]:
    yield from head
    yield from tail


def _read_csv(path: Path) -> Iterator[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(f"{path}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(rec, dict):
                raise TraceFormatError(f"{path}:{lineno}: expected a JSON object")
            yield rec


def _pick_parser(first: dict, path: Path):
    keys = set(first)
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= keys:
        return _azure
    if {"timestamp", "input_length", "output_length"} <= keys:
        return _mooncake
    if {_LOG_ARRIVAL, _LOG_PROMPT, _LOG_DONE} <= keys:
        return _request_log
    if {"input_tokens", "output_tokens"} <= keys and (
        "arrival_time_s" in keys or "arrival_time_ns" in keys
    ):
        return _generic
    raise TraceFormatError(
        f"{path}: unrecognised columns {sorted(keys)}; expected Azure 2023 "
        "(TIMESTAMP,ContextTokens,GeneratedTokens), Mooncake (timestamp,input_length,"
        "output_length), generic (arrival_time_s|arrival_time_ns,input_tokens,output_tokens)"
        " or the gateway request log"
    )


def _tokens(value: object, name: str) -> int:
    n = int(float(value))  # CSV gives strings; "12.0" is accepted
    if n < 0:
        raise ValueError(f"{name} must be non-negative, got {n}")
    return n


def _azure_time(text: str) -> float:
    # Azure writes 7 fractional digits; datetime accepts at most 6.
    date, _, frac = text.strip().partition(".")
    base = datetime.fromisoformat(date).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def _azure(i: int, rec: dict) -> SimRequest:
    return SimRequest(
        request_id=f"r{i}",
        arrival_time=_azure_time(rec["TIMESTAMP"]),
        prompt_tokens=_tokens(rec["ContextTokens"], "ContextTokens"),
        output_tokens=max(1, _tokens(rec["GeneratedTokens"], "GeneratedTokens")),
    )


#: Mooncake's ``hash_ids`` each cover this many prompt tokens.
MOONCAKE_BLOCK_TOKENS = 512


def _mooncake(i: int, rec: dict) -> SimRequest:
    return SimRequest(
        request_id=f"r{i}",
        arrival_time=float(rec["timestamp"]) / 1000.0,
        prompt_tokens=_tokens(rec["input_length"], "input_length"),
        output_tokens=max(1, _tokens(rec["output_length"], "output_length")),
        prefix_hashes=tuple(int(h) for h in rec.get("hash_ids") or ()),
        prefix_block_tokens=MOONCAKE_BLOCK_TOKENS,
    )


def _optional_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _generic(i: int, rec: dict) -> SimRequest:
    if rec.get("arrival_time_s") not in (None, ""):
        arrival = float(rec["arrival_time_s"])
    else:
        arrival = float(rec["arrival_time_ns"]) / 1e9
    return SimRequest(
        request_id=str(rec.get("request_id") or f"r{i}"),
        arrival_time=arrival,
        prompt_tokens=_tokens(rec["input_tokens"], "input_tokens"),
        output_tokens=max(1, _tokens(rec["output_tokens"], "output_tokens")),
        predicted_tokens=_optional_float(rec.get("predicted_tokens")),
        prompt_text=rec.get("prompt_text") or None,
        model=rec.get("model") or None,
    )


#: Field names of the gateway's request log, taken from its own record type
#: so a rename there fails here loudly instead of silently mis-parsing.
_LOG_FIELDS = {f.name for f in fields(LogRecord)}
_LOG_ARRIVAL, _LOG_PROMPT, _LOG_PRED, _LOG_DONE = (
    "arrival_unix",
    "prompt_tokens",
    "predicted_tokens",
    "completion_tokens",
)
if not {_LOG_ARRIVAL, _LOG_PROMPT, _LOG_PRED, _LOG_DONE} <= _LOG_FIELDS:
    raise ImportError("server.request_log.RequestRecord changed its field names")


def _request_log(i: int, rec: dict) -> SimRequest | None:
    # Only requests that finished normally have a true length to replay.
    if rec.get("status") != "ok" or rec.get(_LOG_DONE) is None or rec.get(_LOG_PROMPT) is None:
        return None
    return SimRequest(
        request_id=str(rec.get("request_id") or f"r{i}"),
        arrival_time=float(rec[_LOG_ARRIVAL]),
        prompt_tokens=_tokens(rec[_LOG_PROMPT], _LOG_PROMPT),
        output_tokens=max(1, _tokens(rec[_LOG_DONE], _LOG_DONE)),
        predicted_tokens=_optional_float(rec.get(_LOG_PRED)),
        model=rec.get("model") or None,
    )


def load_request_log(path: str | Path) -> list[SimRequest]:
    """The gateway's request log; an alias of :func:`load_trace` kept for clarity."""
    return load_trace(path)


def write_generic_jsonl(requests: Iterable[SimRequest], path: str | Path) -> None:
    """Write requests in the generic JSONL format (round-trips through ``load_trace``)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for r in requests:
            rec = {
                "request_id": r.request_id,
                "arrival_time_s": r.arrival_time,
                "input_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
            }
            if r.predicted_tokens is not None:
                rec["predicted_tokens"] = r.predicted_tokens
            if r.prompt_text is not None:
                rec["prompt_text"] = r.prompt_text
            if r.model is not None:
                rec["model"] = r.model
            fh.write(json.dumps(rec) + "\n")
