#!/usr/bin/env bash
# The main job on a fresh machine: set up, then serve the gateway in front of a
# local vLLM CPU worker with the small model and the CASTILLO-trained predictor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lengthwise serve "$@"
