"""One request's three LightGBM heads: ``Booster.predict`` against the single-row fast path.

Side by side in one process, alternating, on the trained predictor the gateway loads and
the feature rows of real prompts (../shared/prompts). Prints microseconds per request
(three heads, the path the served model takes) and writes
reports/single_row_predict.json.

Usage: .venv/bin/python scripts/bench_single_row.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from predictor.api import load_default_predictor
from predictor.files import write_json_report
from predictor.locations import reports_dir
from predictor.model import HEADS
from predictor.single_row import SingleRowScorer
from server.live_bench import load_prompts

MODEL = "SmolLM2-135M-Instruct"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    model = load_default_predictor()._model
    code = model.model_code(MODEL)
    path = "known" if code is not None else "agnostic"
    texts = [messages[-1]["content"] for messages in load_prompts(200, seed=0)]
    rows = model.featurize(texts)
    if code is not None:
        rows = np.hstack([np.full((len(rows), 1), code, np.float32), rows])
    boosters = [model.boosters[path][head] for head in HEADS]
    scorers = [SingleRowScorer(b) for b in boosters]
    timings: dict[str, list[float]] = {"booster_predict": [], "single_row": []}
    for i in range(rounds):
        row = rows[i % len(rows)]
        began = time.perf_counter()
        slow = [b.predict(row[None, :], num_threads=1)[0] for b in boosters]
        middle = time.perf_counter()
        fast = [s.predict(row) for s in scorers]
        timings["booster_predict"].append(middle - began)
        timings["single_row"].append(time.perf_counter() - middle)
        if slow != fast:
            raise AssertionError(f"scores differ on row {i % len(rows)}: {slow} vs {fast}")
    report = {"rounds": rounds, "path": path, "heads": list(HEADS),
              "trees_per_head": [b.num_trees() for b in boosters]}
    for name, values in timings.items():
        report[f"{name}_us_p50"] = statistics.median(values) * 1e6
        print(f"{name:16s} {report[f'{name}_us_p50']:7.1f} us per request (3 heads, p50)")
    print("wrote", write_json_report(reports_dir() / "single_row_predict.json", report))


if __name__ == "__main__":
    main()
