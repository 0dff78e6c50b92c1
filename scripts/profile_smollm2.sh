#!/usr/bin/env bash
# The served-model figures of the README, end to end: profile the local SmolLM2 worker
# (1,000 prompts x 10 samples, cap 128; resumable: rerun to continue), then the
# CASTILLO-style report, the held-out evaluation and the online-learning replay.
# About 100 minutes of this 2-core machine for the profile; the rest takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8500}
SHARED=${LENGTHWISE_SHARED_DIR:-../shared}
OUT=${PROFILE_DIR:-.cache/profiles/smollm2-128}
LW=.venv/bin/lengthwise

if ! curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then
    .venv/bin/python scripts/profile_worker.py "$PORT" 64 &
    worker=$!
    trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
    until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
        kill -0 $worker 2>/dev/null || { echo "worker failed to start" >&2; exit 1; }
        sleep 5
    done
fi

"$LW" profile --target "http://127.0.0.1:$PORT" --model SmolLM2-135M-Instruct \
    --prompts "$SHARED/prompts" --prompts "$SHARED/castillo/validate.parquet" \
    --prompts "$SHARED/castillo/train.parquet" --samples 10 --max-tokens 128 \
    --concurrency 64 --limit 1000 --output "$OUT" --summary-json "$OUT/throughput.json"

"$LW" profile report "$OUT"
cp "$OUT/report/summary.json" reports/profile_smollm2_summary.json
cp "$OUT/report/length_by_corpus.png" reports/profile_smollm2_length_by_corpus.png
cp "$OUT/report/served_vs_castillo.png" reports/profile_smollm2_vs_castillo.png
"$LW" profile evaluate "$OUT"                      # -> reports/served_model_eval.json
"$LW" profile bench-online "$OUT" --mode replay --requests 1000 --window 200 \
    --refit-every 100                              # -> reports/online_learning_bench.json
