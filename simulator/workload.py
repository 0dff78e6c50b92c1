"""Workloads built from CASTILLO rows, and arrival processes.

A CASTILLO-backed request takes a real prompt (``prompt_text``, ``input_size``,
``model``) from one row, and its true output length from one of that row's
ten sampled completion lengths (``output_sizes``), drawn with a seeded RNG.
With real prompts the trained predictor can rank the requests, so
predicted-SJF can be compared with oracle-SJF on the same draws.

Rows that the CASTILLO paper classes as text degeneration (a completion hit
the 15,000-token cap, or std > 2 x mean with max > 8,499) are left out: a
server would cut them with ``max_tokens``, and one of them dominates a whole
run's mean latency.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .trace import SimRequest

GENERATION_CAP = 15_000


@dataclass(frozen=True, slots=True)
class CastilloRow:
    prompt_id: str
    prompt_text: str
    input_size: int
    output_sizes: tuple[int, ...]
    model: str


def is_degenerate(output_sizes: Sequence[int]) -> bool:
    import statistics

    sizes = list(output_sizes)
    if not sizes:
        return True
    mean = statistics.fmean(sizes)
    std = statistics.pstdev(sizes)
    return max(sizes) >= GENERATION_CAP or (std > 2 * mean and max(sizes) > 8_499)


def load_castillo_rows(
    paths: Sequence[str | Path],
    model: str | None = None,
    exclude_prompt_ids: set[str] | None = None,
    keep_degenerate: bool = False,
) -> list[CastilloRow]:
    """Rows of CASTILLO parquet/JSON files, optionally for one model (substring match)."""
    import pandas as pd

    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"CASTILLO file not found: {p}")
        if p.suffix == ".parquet":
            frames.append(
                pd.read_parquet(
                    p, columns=["prompt_id", "prompt_text", "input_size", "output_sizes", "model"]
                )
            )
        else:
            frames.append(pd.read_json(p, lines=p.suffix == ".jsonl"))
    df = pd.concat(frames, ignore_index=True)
    if model:
        df = df[df["model"].str.contains(model, regex=False)]
    rows = []
    for rec in df.itertuples(index=False):
        if exclude_prompt_ids and rec.prompt_id in exclude_prompt_ids:
            continue
        sizes = tuple(int(x) for x in rec.output_sizes)
        if not keep_degenerate and is_degenerate(sizes):
            continue
        rows.append(
            CastilloRow(str(rec.prompt_id), str(rec.prompt_text), int(rec.input_size), sizes,
                        str(rec.model))
        )
    if not rows:
        raise ValueError(f"no CASTILLO rows left (model filter {model!r})")
    return rows


def poisson_arrivals(n: int, rate_per_s: float, seed: int) -> list[float]:
    if rate_per_s <= 0:
        raise ValueError("arrival rate must be positive")
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def castillo_workload(
    rows: Sequence[CastilloRow],
    arrivals: Sequence[float],
    seed: int = 0,
) -> list[SimRequest]:
    """One request per arrival time; rows drawn with replacement, lengths from ``output_sizes``."""
    rng = random.Random(seed)
    requests = []
    for i, t in enumerate(arrivals):
        row = rows[rng.randrange(len(rows))]
        requests.append(
            SimRequest(
                request_id=f"c{i}",
                arrival_time=float(t),
                prompt_tokens=max(1, row.input_size),
                output_tokens=max(1, row.output_sizes[rng.randrange(len(row.output_sizes))]),
                prompt_text=row.prompt_text,
                model=row.model,
            )
        )
    return requests


def rescale_to_rate(requests: Sequence[SimRequest], rate_per_s: float) -> list[SimRequest]:
    """Stretch or compress arrival times so the mean offered rate is ``rate_per_s``."""
    from dataclasses import replace

    if len(requests) < 2:
        return list(requests)
    span = requests[-1].arrival_time - requests[0].arrival_time
    if span <= 0:
        raise ValueError("all requests arrive at once; cannot rescale to a rate")
    current = (len(requests) - 1) / span
    factor = current / rate_per_s
    t0 = requests[0].arrival_time
    return [replace(r, arrival_time=(r.arrival_time - t0) * factor) for r in requests]
