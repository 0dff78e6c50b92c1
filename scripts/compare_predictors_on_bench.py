"""Would another predictor have ranked a live benchmark's requests better than the gateway's?

Takes the request log of one ``lengthwise bench live`` arm (true lengths, and the
predictions the gateway logged), re-creates the benchmark's prompts, and scores the
default CASTILLO predictor beside a trained predictor folder (e.g. one made by
``lengthwise profile train``): Kendall tau against the true lengths, and the burst
replayed through the calibrated simulator under sjf-aged with each one's predictions
(mean E2E relative to fcfs; the oracle is the true lengths).

Usage:
  .venv/bin/python scripts/compare_predictors_on_bench.py PREDICTOR_DIR \
      [--log $TMPDIR/lengthwise-bench/gateway_fcfs.requests.jsonl] \
      [--requests 96] [--seed 1234] [--max-tokens 1024] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from predictor.api import CastilloLengthPredictor, load_default_predictor
from predictor.files import write_json_report
from server.live_bench import load_prompts
from server.online_learning_bench import DEFAULT_COST_MODEL, StreamItem, simulated_window_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictor_dir", type=Path)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "lengthwise-bench"
    parser.add_argument("--log", type=Path, default=scratch / "gateway_fcfs.requests.jsonl")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    log = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    model = log[0]["model"]
    prompts = load_prompts(args.requests, args.seed)
    n = len(prompts)
    base = load_default_predictor()
    other = CastilloLengthPredictor.from_directory(args.predictor_dir)
    base_pred = [p.mean for p in base.predict_batch(prompts, [model] * n, [args.max_tokens] * n)]
    other_pred = [p.mean for p in other.predict_batch(prompts, [model] * n, [args.max_tokens] * n)]
    # the log is in finishing order: match each prompt by the prediction the gateway logged
    by_logged = {round(r["predicted_tokens"], 2): r for r in log if r.get("completion_tokens")}
    rows = [(by_logged[round(b, 2)], b, o) for b, o in zip(base_pred, other_pred)
            if round(b, 2) in by_logged]
    actual = np.array([float(r["completion_tokens"]) for r, _, _ in rows])
    sources = {"castillo_default": np.array([b for _, b, _ in rows]),
               "predictor_dir": np.array([o for _, _, o in rows])}
    items = [StreamItem("", a, int(r["prompt_tokens"] or 1)) for (r, _, _), a in zip(rows, actual)]
    latency = simulated_window_latency(items, {**sources, "oracle": actual}, DEFAULT_COST_MODEL)
    report = {
        "log": str(args.log), "predictor_dir": str(args.predictor_dir), "served_model": model,
        "known_to_predictor_dir": other.is_known_model(model), "requests_matched": len(rows),
        "kendall_tau": {name: float(kendalltau(pred, actual).statistic)
                        for name, pred in sources.items()},
        "simulated_burst_sjf_over_fcfs": {k.removeprefix("sjf_").removesuffix("_vs_fcfs"): v
                                          for k, v in latency.items() if k.endswith("_vs_fcfs")},
    }
    print(json.dumps(report, indent=2))
    if args.output:
        print("wrote", write_json_report(args.output, report))


if __name__ == "__main__":
    main()
