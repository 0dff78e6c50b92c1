"""Workloads built from CASTILLO rows, and arrival processes.

A CASTILLO-backed request takes a real prompt (``prompt_text``, ``input_size``,
``model``) from one row, and its true output length from one of that row's
ten sampled completion lengths (``output_sizes``), drawn with a seeded RNG.
With real prompts the trained predictor can rank the requests, so
predicted-SJF can be compared with oracle-SJF on the same draws.

Rows that the CASTILLO paper classes as text degeneration are left out (the
predictor's own rule, ``predictor.cleaning``): a server would cut them with
``max_tokens``, and one of them dominates a whole run's mean latency.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .trace import SimRequest


@dataclass(frozen=True, slots=True)
class CastilloRow:
    prompt_id: str
    prompt_text: str
    input_size: int
    output_sizes: tuple[int, ...]
    model: str


def load_castillo_rows(
    source: str | Path | None = None,
    model: str | None = None,
    heldout_only: bool = True,
    keep_degenerate: bool = False,
) -> list[CastilloRow]:
    """CASTILLO rows through the predictor's own loader, cleaning and split.

    ``source`` is a file or folder (default: the shared copy, else the hub).
    ``heldout_only`` keeps the prompts the default predictor artifact holds
    out of training (``predictor.artifact.split_holdout``), so the trained
    predictor is judged on prompts it never saw. ``model`` keeps rows whose model name
    contains it.
    """
    from predictor.artifact import split_holdout
    from predictor.cleaning import remove_degenerate
    from predictor.loader import load_castillo

    frame = load_castillo(source)
    if not keep_degenerate:
        frame, _report = remove_degenerate(frame)
    if heldout_only:
        _train, frame = split_holdout(frame)
    if model:
        frame = frame[frame["model"].str.contains(model, regex=False)]
    if "input_size" not in frame.columns:
        raise ValueError("CASTILLO rows lack input_size (prompt tokens)")
    rows = [
        CastilloRow(
            str(rec.prompt_id),
            str(rec.prompt_text),
            int(rec.input_size),
            tuple(int(x) for x in rec.output_sizes),
            str(rec.model),
        )
        for rec in frame.itertuples(index=False)
        if len(rec.output_sizes)
    ]
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
