"""What a live run's gateway request logs say about its ordering, per arm.

For each log: the finished requests; how many took the free-slot path (dispatched before
their prediction: arrival to queue under 0.2 ms, where awaiting a prediction takes more
than 0.25 ms); Spearman's rho between the predicted tokens and the queue wait (does the
queue follow the prediction?); Kendall's tau between the predicted and the actual tokens;
the tokens decoded; and the answers that hit ``max_tokens``. These are the per-arm figures
the README quotes beside each live run.

Usage: .venv/bin/python scripts/request_log_summary.py LOG.jsonl [LOG.jsonl ...]
  e.g. reports/live_bench_max1024_after_fix/run_d/gateway_{fcfs,sjf}.requests.jsonl
"""

from __future__ import annotations

import sys

from scipy.stats import kendalltau, spearmanr

from server.request_log import read_request_log

#: queue_entry_s below this: the request was not waiting for its prediction
FREE_SLOT_PATH_S = 0.0002


def summarise(path: str) -> dict:
    rows = [r for r in read_request_log(path) if r["status"] == "ok"]
    predicted = [r["predicted_tokens"] for r in rows]
    actual = [r["completion_tokens"] for r in rows]
    return {
        "requests": len(rows),
        "free_slot_path": sum(r["queue_entry_s"] < FREE_SLOT_PATH_S for r in rows),
        "spearman_predicted_vs_queue_wait": spearmanr(predicted,
                                                      [r["queue_wait_s"] for r in rows])[0],
        "kendall_tau_predicted_vs_actual": kendalltau(predicted, actual)[0],
        "completion_tokens": sum(actual),
        "hit_max_tokens": sum(r["completion_tokens"] >= r["max_tokens"] for r in rows),
    }


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        s = summarise(path)
        print(f"{path}: {s['requests']} ok, {s['free_slot_path']} on the free-slot path, "
              f"rho(pred, wait) {s['spearman_predicted_vs_queue_wait']:.2f}, "
              f"tau(pred, actual) {s['kendall_tau_predicted_vs_actual']:.3f}, "
              f"{s['completion_tokens']} tokens, {s['hit_max_tokens']} hit max_tokens")


if __name__ == "__main__":
    main()
