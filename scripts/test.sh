#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite. Tests that need vLLM
# share one real vLLM CPU worker that the suite starts once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
