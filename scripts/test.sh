#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite. Tests that need vLLM
# share one real vLLM CPU worker that the suite starts once per run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The observability test runs the real Prometheus (Debian's package) against
# the project's scrape config and evaluates every dashboard and alert query.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    echo "==> installing Debian's prometheus"
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# The shared rate-limit test starts a real Redis server (Debian's package).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing Debian's redis-server"
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
exec .venv/bin/python -m pytest -q -ra "$@"
