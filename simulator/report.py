"""Summaries of a simulation run: the JSON report and the per-request table.

Per-request fields use the gateway's metric vocabulary (seconds internally,
milliseconds in the summary):

* ``ttft``: first token time - arrival at the gateway;
* ``tpot``: (completion - first token) / (output tokens - 1), for > 1 token;
* ``e2e``: completion - arrival;
* ``queue``: dispatch to a worker - arrival (time in the gateway's queue);
* ``engine_wait``: first scheduled by the engine - dispatch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lengthwise.common.files import write_json_report

from .simulation import SimResult

PERCENTILES = (50, 90, 99)
PER_REQUEST_COLUMNS = (
    "request_id",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "predicted_tokens",
    "worker",
    "priority",
    "dispatch_s",
    "first_scheduled_s",
    "first_token_s",
    "completion_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "queue_s",
    "preemptions",
    "dropped",
)


def stats_ms(values_s: list[float]) -> dict[str, float | None]:
    if not values_s:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values_s, dtype=float) * 1000.0
    out: dict[str, float | None] = {"mean": float(arr.mean())}
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES)):
        out[f"p{p}"] = float(v)
    return out


def per_request_rows(result: SimResult) -> list[dict]:
    rows = []
    for rec in result.records:
        req = rec.request
        seq = rec.seq
        done = seq is not None and seq.finished is not None
        ttft = seq.first_token - req.arrival_time if done else None
        e2e = seq.finished - req.arrival_time if done else None
        tpot = (
            (seq.finished - seq.first_token) / (req.output_tokens - 1)
            if done and req.output_tokens > 1
            else None
        )
        rows.append(
            {
                "request_id": req.request_id,
                "arrival_s": req.arrival_time,
                "prompt_tokens": req.prompt_tokens,
                "output_tokens": req.output_tokens,
                "predicted_tokens": rec.predicted_tokens,
                "worker": rec.worker_id,
                "priority": rec.priority,
                "dispatch_s": rec.dispatch_time,
                "first_scheduled_s": seq.first_scheduled if seq else None,
                "first_token_s": seq.first_token if seq else None,
                "completion_s": seq.finished if seq else None,
                "ttft_s": ttft,
                "tpot_s": tpot,
                "e2e_s": e2e,
                "queue_s": (rec.dispatch_time - req.arrival_time)
                if rec.dispatch_time is not None
                else None,
                "preemptions": seq.preemptions if seq else 0,
                "dropped": rec.dropped,
            }
        )
    return rows


def summarize(result: SimResult, extra: dict | None = None) -> dict:
    """The ``--output`` document."""
    ttft, tpot, e2e, queue = [], [], [], []
    out_tokens = 0
    first_arrival = math.inf
    last_done = 0.0
    for rec in result.records:
        req = rec.request
        first_arrival = min(first_arrival, req.arrival_time)
        seq = rec.seq
        if seq is None or seq.finished is None:
            continue
        ttft.append(seq.first_token - req.arrival_time)
        e2e.append(seq.finished - req.arrival_time)
        queue.append(rec.dispatch_time - req.arrival_time)
        if req.output_tokens > 1:
            tpot.append((seq.finished - seq.first_token) / (req.output_tokens - 1))
        out_tokens += req.output_tokens
        last_done = max(last_done, seq.finished)
    span = last_done - first_arrival if e2e else 0.0
    gateway = result.gateway
    summary = {
        "requests": len(result.records),
        "completed": gateway.completed,
        "dropped": gateway.dropped,
        "ttft_ms": stats_ms(ttft),
        "tpot_ms": stats_ms(tpot),
        "e2e_ms": stats_ms(e2e),
        "queue_ms": stats_ms(queue),
        "throughput_tok_s": out_tokens / span if span > 0 else 0.0,
        "throughput_req_s": len(e2e) / span if span > 0 else 0.0,
        # tokens generated while requests were still arriving, per second of that window:
        # the rate the engines sustain under the offered load, without the drain tail
        "sustained_throughput_tok_s": (
            result.tokens_by_last_arrival / (result.last_arrival - first_arrival)
            if result.last_arrival > first_arrival else 0.0),
        "preemptions": result.preemptions,
        "peak_kv_usage": result.peak_kv_usage,
        "engine_steps": sum(r.num_steps for r in result.replicas),
        "simulated_s": result.end_time,
        "sim_wall_s": result.sim_wall_s,
        "events": result.events,
    }
    if extra:
        summary.update(extra)
    return summary


def write_json(summary: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_report(path, summary)


def write_per_request(result: SimResult, path: str | Path) -> None:
    """CSV (core install) or Parquet (pandas and pyarrow: the ``train`` extra), chosen by
    the extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: per-request output must end in .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = per_request_rows(result)
    if suffix == ".csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(PER_REQUEST_COLUMNS),
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()}
                             for row in rows)
        return
    import pandas as pd

    pd.DataFrame(rows, columns=list(PER_REQUEST_COLUMNS)).to_parquet(path, index=False)
