"""The gateway's configuration: one pydantic model, every field documented.

Sources, lowest to highest precedence: built-in defaults, a config file (YAML,
TOML or JSON, given with ``--config`` or ``LENGTHWISE_CONFIG``), environment
variables ``LENGTHWISE_<FIELD>`` (lists comma-separated, e.g.
``LENGTHWISE_WORKERS=http://a:8000,http://b:8000``), and command-line flags.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lengthwise.common.edt_params import DEFAULT_N as EDT_DEFAULT_N
from lengthwise.common.edt_params import N_KEY as EDT_N_KEY
from lengthwise.common.edt_params import THETA_KEY as EDT_THETA_KEY
from lengthwise.common.paths import cache_dir
from server.outlier_detection import UNHEALTHY_AFTER_FAILED_PROBES, OutlierDetection
from server.policy import AdmissionLimits, PointEstimate, PolicyConfig, PolicyName
from server.request_log import DEFAULT_BACKUPS

ENV_PREFIX = "LENGTHWISE_"
CONFIG_FILE_ENV = "LENGTHWISE_CONFIG"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass(frozen=True)
class OnlineLearningSettings:
    """What ``server.online_learning`` runs with; the first five come from the gateway's
    ``online_*`` settings, whose defaults are these."""

    refit_every: int = 200
    min_observations: int = 200
    buffer_size: int = 4000
    window: int = 500
    max_models: int = 8
    validation_share: float = 0.2
    min_validation: int = 50
    rounds: int = 150
    #: nice increment of the refit thread (Linux applies it to the thread only)
    nice: int = 10


class GatewayConfig(BaseSettings):
    """Every setting of the gateway. Field docstrings are the documentation."""

    # No setting has a use for inf or NaN, and either one would poison the policy's keys.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", use_attribute_docstrings=True,
        allow_inf_nan=False,
    )

    # --- listening -------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port the gateway listens on."""

    # --- workers ---------------------------------------------------------------
    workers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Base URLs of vLLM OpenAI servers, e.g. ``http://10.0.0.5:8000`` (static discovery)."""
    worker_dns_name: str | None = None
    """A URL whose host name is resolved periodically; every address it resolves to is a
    worker (e.g. a Kubernetes headless service ``http://vllm-workers:8000``). Used in
    addition to ``workers``."""
    dns_refresh_s: float = Field(10.0, gt=0)
    """How often ``worker_dns_name`` is resolved again."""
    health_interval_s: float = Field(2.0, gt=0)
    """How often each worker's ``/health`` is probed."""
    health_timeout_s: float = Field(2.0, gt=0)
    """A health probe slower than this counts as a failure."""
    unhealthy_after_failures: int = Field(UNHEALTHY_AFTER_FAILED_PROBES, ge=1)
    """Consecutive failed health probes that take a worker out of rotation (as Kubernetes'
    ``failureThreshold``: one slow probe on a busy worker is not an outage). A refused
    connection on a real request takes it out at once. It returns once a probe passes
    and makes it generate a token. Failed *requests* are outlier detection's
    (``eject_after_failures``)."""
    eject_after_failures: int = Field(OutlierDetection().consecutive_failures, ge=1)
    """Outlier detection (after Envoy's): failed requests in a row (5xx, time-out, a stream
    cut off) that eject a worker; any answer resets the count. See ``deploy/README.md``."""
    ejection_base_s: float = Field(OutlierDetection().base_ejection_s, gt=0)
    """An ejection lasts this times the number of times the worker was ejected (falling
    by one per this time in rotation), up to ``ejection_max_s``; then a probe must make
    it generate a token before it returns."""
    ejection_max_s: float = Field(OutlierDetection().max_ejection_s, gt=0)
    """Longest ejection."""
    max_ejected_share: float = Field(OutlierDetection().max_ejected_share, ge=0, le=1)
    """At most this share of the workers (rounded down) is ejected at once, and never the
    last worker in rotation: with one worker, failed requests never eject it."""
    engine_stats_interval_s: float = Field(2.0, gt=0)
    """How often each worker's vLLM ``/metrics`` is scraped (KV-cache size and usage, the
    running and waiting counts admission learns the engine's slots from)."""

    # --- scheduling ------------------------------------------------------------
    policy: PolicyName = PolicyConfig().name
    """Queue order: ``fcfs``, ``sjf`` (no aging) or ``sjf-aged`` (size-relative aging)."""
    point_estimate: PointEstimate = PolicyConfig().point_estimate
    """Which number of the length prediction ranks requests: ``mean``, ``p50`` or ``p90``."""
    aging_s_per_token: float = Field(PolicyConfig().aging_s_per_token, gt=0)
    """``sjf-aged``: seconds of waiting a request may accrue per predicted token before no
    later arrival can overtake it (see ``server.policy`` for the worst-case wait)."""
    follow_engine: bool = AdmissionLimits().follow_engine
    """Admission follows each worker's engine: requests go straight through while the
    engine has room (its running slots, learned from vLLM's ``/metrics`` or set with
    ``worker_max_num_seqs``, plus ``engine_queue``, and its KV cache, see ``kv_budget``);
    only the excess waits in the gateway's queue, in policy order. ``false``: only the
    hand-set caps below limit admission."""
    engine_queue: int = Field(AdmissionLimits().engine_queue, ge=0)
    """Requests per worker allowed to wait inside vLLM's own (priority-ordered) queue beyond
    its running slots, so a slot that frees is refilled within the engine's step."""
    kv_budget: float | None = Field(AdmissionLimits().kv_budget, gt=0)
    """Fraction of a worker's KV cache (vLLM's ``cache_config_info``) that the predicted
    footprint in flight (prompt + p90 output per request) may fill; above 1 overcommits,
    as requests free their blocks at different times. ``None``: KV is not counted."""
    worker_max_num_seqs: int | None = Field(None, ge=1)
    """The workers' ``--max-num-seqs``, when known (``lengthwise serve`` sets it for its
    local worker). vLLM does not export it, so otherwise the gateway learns it from the
    running count whenever requests wait."""
    max_sequences_per_worker: int | None = Field(AdmissionLimits().max_sequences, ge=1)
    """Hand-set cap: requests in flight per worker (``None``: no cap). Holding the engine's
    batch below what it can run costs throughput; kept for research comparisons."""
    max_predicted_tokens_per_worker: float | None = Field(
        AdmissionLimits().max_predicted_tokens, gt=0)
    """Hand-set cap: sum of predicted completion tokens in flight per worker (``None``: no
    cap)."""
    prompt_token_weight: float = Field(PolicyConfig().prompt_token_weight, ge=0)
    """What one prompt token counts for in a request's size, in output tokens (its prefill
    time over one decode step's; see ``server.policy.PolicyConfig``)."""
    queue_capacity: int = Field(1024, ge=1)
    """Requests the gateway's queue holds; beyond it new requests get 429 with Retry-After."""
    queue_timeout_s: float = Field(300.0, gt=0)
    """A request waiting in the queue longer than this gets 503 with Retry-After."""
    engine_priority: bool = True
    """Pass each request's rank as vLLM's ``priority``. Workers must run with
    ``--scheduling-policy priority`` (vLLM rejects a non-zero priority otherwise)."""

    # --- upstream requests -----------------------------------------------------
    worker_api_key: SecretStr | None = None
    """Key the workers were started with (vLLM ``--api-key``), sent to them as
    ``Authorization: Bearer`` on every request, health probe and metrics scrape."""
    connect_timeout_s: float = Field(3.0, gt=0)
    """Time allowed to open a connection to a worker; a time-out counts as one failed
    request toward outlier ejection."""
    first_byte_timeout_s: float = Field(120.0, gt=0)
    """The stall bound: a worker on which an answer (a non-streaming reply, or a stream's
    first event) has been awaited this long, with no answer from it meanwhile, is asked
    for one token within this time. If it gives none while vLLM's generated-token counter
    stands still, it is hung: taken out, its open attempts retried elsewhere (a full engine
    whose counter grows is busy and stays). It does not bound an answer itself: vLLM sends
    a non-streaming reply only once complete, and a stream's first event only once the
    request leaves its waiting queue (see ``request_timeout_s``)."""
    stream_idle_timeout_s: float = Field(60.0, gt=0)
    """Longest silence allowed between two events of a started stream; the client then
    gets an error event."""
    request_timeout_s: float = Field(600.0, gt=0)
    """Upper bound on one request's time from arrival until its answer is complete
    (non-streaming) or its stream has started, over all attempts: the total time a long
    non-streaming answer may take."""
    max_attempts: int = Field(2, ge=1)
    """Workers tried for one request, as long as no byte has reached the client."""

    # --- input limits ----------------------------------------------------------
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413."""
    body_read_timeout_s: float = Field(30.0, gt=0)
    """A client that takes longer to send its body (slowloris) gets 400."""
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    """A request whose header section is larger gets 400 and the connection is closed."""
    header_timeout_s: float = Field(30.0, gt=0)
    """A connection that has not sent a complete request head this long after connecting
    (or after its request began) gets 400 and is closed (slowloris)."""
    keep_alive_s: float = Field(75.0, gt=0)
    """How long an idle keep-alive connection stays open. Longer than clients' own idle
    expiry (httpx and the openai client: 5 s; load balancers: often 60 s), so the client
    always closes first and never sends a request on a connection the gateway is closing."""
    max_n: int = Field(16, ge=1)
    """Largest ``n`` (choices per request) accepted."""
    max_prompts_per_request: int = Field(64, ge=1)
    """Largest list of prompts in one ``/v1/completions`` request."""

    # --- EDT (entropy-based dynamic temperature) -------------------------------
    edt_theta: float | None = Field(None, ge=0)
    """Gateway-wide EDT default θ for requests without their own ``edt``/``vllm_xargs``
    (``None``: EDT off unless a request asks). The worker must load the EDT processor."""
    edt_n: float | None = Field(None, gt=0, lt=1)
    """Gateway-wide EDT exponent N (0 < N < 1) that goes with ``edt_theta``; ``None`` uses
    the paper's N = 0.8 (``lengthwise.common.edt_params.DEFAULT_N``)."""

    # --- security --------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Accepted API keys (``Authorization: Bearer <key>``). Empty: every request is accepted
    whatever its Authorization header."""
    metrics_require_auth: bool = True
    """With keys configured, ``/metrics`` needs one too (``/health`` never does). Set False
    to let a scraper without a key read ``/metrics``."""
    rate_limit_requests_per_min: int | None = Field(None, ge=1)
    """Per API key: completion requests per minute (``None``: unlimited); beyond it 429."""
    rate_limit_tokens_per_min: int | None = Field(None, ge=1)
    """Per API key: prompt plus completion tokens per minute (``None``: unlimited); beyond
    it 429 (see ``server.rate_limit``)."""
    rate_limit_redis_url: SecretStr | None = None
    """Keep the rate-limit buckets in Redis (``redis://host:6379/0``), shared by every
    gateway replica, so a key gets its limits once in total rather than once per replica.
    ``None``: in this process (exact for one replica). Needs the ``redis`` extra; the
    gateway refuses to start if Redis does not answer, and admits requests (logging and
    counting the error) if it fails later. See ``deploy/README.md``."""

    # --- outputs ---------------------------------------------------------------
    request_log_path: Path | None = Field(default_factory=lambda: cache_dir() / "requests.jsonl")
    """Append-only JSON Lines log of finished requests (prediction next to actual length);
    ``None`` disables it."""
    request_log_max_bytes: int | None = Field(100 * 1024 * 1024, ge=4096)
    """Size at which the request log rotates: it becomes ``<path>.1`` (older files shift to
    ``.2`` ...) and a new file starts. ``None``: it grows without bound."""
    request_log_backups: int = Field(DEFAULT_BACKUPS, ge=0)
    """Rotated request log files kept; the oldest beyond this is deleted. With the default
    size that bounds the log's disk use to 600 MiB (about 1.2 million requests)."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, time allowed for in-flight requests to finish."""
    gc_freeze_after_start: bool = True
    """Once started, move every object alive then (the imported libraries, the predictor's
    models: ~165k objects) out of the garbage collector's reach with ``gc.freeze()``.
    Otherwise each full collection walks them all and stalls the event loop for ~110-160 ms
    on a 2-core machine, in the middle of whichever request is being relayed."""

    # --- predictor -------------------------------------------------------------
    predict_after_dispatch_when_idle: bool = True
    """When nothing is queued and a worker has a free slot (and admission does not count
    predicted tokens), dispatch at once and predict while the worker starts: the prediction
    cannot change that request's placement, so it stays off the critical path."""
    predict_in_thread: bool = True
    """Run the length predictor in a worker thread, so a slow prediction (text features,
    embeddings) never blocks the event loop that relays other requests' tokens."""
    second_stage: bool = False
    """Re-rank requests that wait in the queue with the predictor's second stage (a
    sentence embedding fed to LightGBM; ``lengthwise predictor train-second-stage`` and
    the ``embeddings`` extra). It costs about 50 ms of a core per request, which on a CPU
    worker's own cores competes with decoding: off by default."""
    second_stage_batch: int = Field(1, ge=1)
    """Waiting requests the second stage embeds at once (one at a time is cheapest per
    request on a CPU)."""
    predictor_dir: Path | None = None
    """Folder of a trained length predictor; ``None`` uses the predictor package's default
    location (training it first if needed)."""

    # --- online learning of the served models' lengths (server.online_learning) --
    online_learning: bool = True
    """Learn each served model's lengths from finished requests: a background refit of a
    small calibrator on top of the predictor, hot-swapped when it beats the current one on
    the newest requests. ``false`` serves the trained predictor unchanged."""
    online_refit_every: int = Field(OnlineLearningSettings.refit_every, ge=10)
    """Finished requests of one model between two background refits."""
    online_min_observations: int = Field(OnlineLearningSettings.min_observations, ge=20)
    """Finished requests of a model needed before its first refit."""
    online_buffer_size: int = Field(OnlineLearningSettings.buffer_size, ge=50)
    """Newest finished requests kept per model (ring buffer; bounds memory to about
    ``online_buffer_size`` x 4 KB per model)."""
    online_window: int = Field(OnlineLearningSettings.window, ge=10)
    """Requests in the rolling Kendall tau / error-ratio gauges."""
    online_max_models: int = Field(OnlineLearningSettings.max_models, ge=1)
    """Served model names learned at most; requests for further names are not learned from."""

    @field_validator("workers", "api_keys", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("workers")
    @classmethod
    def _worker_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"worker URL must start with http:// or https://: {url!r}")
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _edt_pair(self) -> GatewayConfig:
        if self.edt_theta is None and self.edt_n is not None:
            raise ValueError("edt_n needs edt_theta (the EDT strength); set edt_theta too")
        if self.edt_theta is not None and not math.isfinite(self.edt_theta):
            raise ValueError("edt_theta must be finite")
        return self

    @property
    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(self.policy, self.point_estimate, self.aging_s_per_token,
                            self.prompt_token_weight)

    @property
    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_sequences=self.max_sequences_per_worker,
            max_predicted_tokens=self.max_predicted_tokens_per_worker,
            follow_engine=self.follow_engine, engine_queue=self.engine_queue,
            kv_budget=self.kv_budget)

    @property
    def outlier_detection(self) -> OutlierDetection:
        return OutlierDetection(self.eject_after_failures, self.ejection_base_s,
                                max(self.ejection_base_s, self.ejection_max_s),
                                self.max_ejected_share)

    @property
    def online_learning_settings(self) -> OnlineLearningSettings:
        return OnlineLearningSettings(
            refit_every=self.online_refit_every, min_observations=self.online_min_observations,
            buffer_size=self.online_buffer_size, window=self.online_window,
            max_models=self.online_max_models)

    @property
    def worker_headers(self) -> dict[str, str]:
        """Headers every request to a worker carries."""
        if self.worker_api_key is None:
            return {}
        return {"authorization": f"Bearer {self.worker_api_key.get_secret_value()}"}

    @property
    def edt_default(self) -> dict[str, float] | None:
        if self.edt_theta is None:
            return None
        return {EDT_THETA_KEY: self.edt_theta,
                EDT_N_KEY: EDT_DEFAULT_N if self.edt_n is None else self.edt_n}


def read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data: Any = tomllib.loads(text)
    elif suffix == ".json":
        data = json.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        # ValueError, like every other config mistake, so the CLI reports it the same way.
        raise ValueError(f"{path}: the config file must hold a mapping of settings")  # noqa: TRY004
    return data


def load_config(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Merge defaults < file < environment < ``overrides`` (flags; ``None`` values ignored)."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_FILE_ENV):
        config_file = Path(env[CONFIG_FILE_ENV])
    merged: dict[str, Any] = read_config_file(config_file) if config_file else {}
    merged.update(_env_values(env))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return GatewayConfig.model_validate(merged)


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in GatewayConfig.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = None if raw.strip().lower() in {"none", "null"} else raw
    return values


def describe_settings() -> str:
    """Every setting with its default and documentation (``lengthwise serve --help-config``)."""
    lines = []
    for name, field in GatewayConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"{name} (env {ENV_PREFIX}{name.upper()}, default {default!r})")
        lines.append(f"    {' '.join((field.description or '').split())}")
    return "\n".join(lines)


