"""Side by side in one run: the gateway at this checkout against the gateway at another.

Four targets in alternation, the same 1-token chat request sequentially to each (as
``scripts/bench_proxy_floor.py`` does for three): the worker directly, the minimal
byte-forwarding proxy, the gateway of a baseline checkout (e.g. made with
``git worktree add ../baseline <commit>``) and the gateway of this checkout. Both gateways
use this checkout's trained predictor (``LENGTHWISE_CACHE_DIR``) and run with online
learning off, so a background refit cannot land in one arm only.

Against a vLLM CPU worker single latencies jitter by a whole engine step, so beside the
paired p50 the report gives quantile-matched differences (p10/p25/p50 of each target minus
the same quantile of the direct requests). Prints a table and writes the JSON report.

Usage: .venv/bin/python scripts/compare_gateway_versions.py BASELINE_DIR
           [--worker URL] [--pairs N] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
from pathlib import Path

import httpx
from bench_proxy_floor import serve_minimal_proxy

from predictor.files import write_json_report
from predictor.locations import REPO_ROOT, cache_dir, reports_dir
from server.live_bench import (
    GatewayProcess,
    alternate_requests,
    overhead_request,
    paired_overhead_ms,
    percentile,
)
from server.worker_process import free_port

QUANTILES = (0.10, 0.25, 0.50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="checkout of the baseline version")
    parser.add_argument("--worker", default="http://127.0.0.1:8400")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=reports_dir() / "gateway_versions.json")
    args = parser.parse_args()
    model = httpx.get(args.worker + "/v1/models").json()["data"][0]["id"]
    body = overhead_request(model)
    proxy_port, ready = free_port(), threading.Event()
    threading.Thread(target=serve_minimal_proxy, args=(args.worker, proxy_port, ready),
                     daemon=True).start()
    ready.wait()
    logs = Path(tempfile.mkdtemp())
    env = {**os.environ, "LENGTHWISE_CACHE_DIR": str(cache_dir()),
           "LENGTHWISE_ONLINE_LEARNING": "false"}
    with contextlib.ExitStack() as gateways:
        targets = {"direct": args.worker, "proxy": f"http://127.0.0.1:{proxy_port}"}
        for name, root in (("baseline", args.baseline.resolve()), ("current", REPO_ROOT)):
            gateway = gateways.enter_context(GatewayProcess(
                args.worker, free_port(), ["--request-log", str(logs / f"{name}.jsonl")],
                logs / f"{name}.log", root=root, env=env))
            targets[name] = gateway.url
        seconds = alternate_requests(targets, body, args.pairs)
    report: dict = {"pairs": args.pairs, "worker_url": args.worker, "request": body,
                    "baseline": str(args.baseline.resolve()), "targets": {}}
    direct = seconds["direct"]
    for name in ("proxy", "baseline", "current"):
        p50, p90 = paired_overhead_ms(seconds[name], direct)
        matched = {f"p{round(q * 100)}": (percentile(seconds[name], q) - percentile(direct, q)) * 1000
                   for q in QUANTILES}
        report["targets"][name] = {"paired_overhead_p50_ms": p50, "paired_overhead_p90_ms": p90,
                                   "quantile_matched_overhead_ms": matched}
        print(f"{name:9s} paired p50 {p50:5.2f} ms  quantile-matched "
              + "  ".join(f"{k} {v:5.2f}" for k, v in matched.items()))
    report["direct_p50_ms"] = percentile(direct, 0.5) * 1000
    print(f"direct p50 {report['direct_p50_ms']:.1f} ms")
    print("wrote", write_json_report(args.out, report))


if __name__ == "__main__":
    main()
