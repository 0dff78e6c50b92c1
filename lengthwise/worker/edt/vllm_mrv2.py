"""EDT as a logits processor for vLLM's Model Runner V2 (the GPU default).

Load it with
``--logits-processors lengthwise.worker.edt.vllm_mrv2:EntropyDynamicTemperatureLogitsProcessorV2``.

Where the MRV2 sampler calls it (``vllm/v1/worker/gpu/sample/sampler.py``,
``apply_sampling_params``): custom processors run after the built-in logit
bias, penalties and bad-words stages and *before* temperature, min-p and
top-k/top-p. The row therefore still holds the unscaled logits z, so:

* entropy is taken of softmax(z) directly;
* the row is multiplied by T0 / T = exp(theta * ln(1/N) / H); the sampler's
  own division by T0 afterwards yields z / (T0 * N**(theta/H)).

Interaction with truncation, MRV2: min-p, top-k and top-p all apply after EDT,
to the EDT-tempered distribution (min-p's threshold is relative to the top
token's tempered probability, so EDT's cooling removes more tails).
Greedy requests are declined in ``add_request``; rows of requests without EDT
are multiplied by exactly 1.0 (and never masked), which leaves every float
bit-for-bit unchanged,
so the whole batch is processed without a host-device sync.

With ``LENGTHWISE_EDT_METRICS_PORT`` set in the worker's environment, the applied
temperature of every EDT row is counted in a histogram served on that port
(``lengthwise.worker.edt.temperature_metrics``); rows without EDT get weight 0, still without a sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from lengthwise.common.edt_params import default_from_additional_config, request_params
from lengthwise.worker.edt.formula import applied_temperature, apply_edt_, entropy_nats
from lengthwise.worker.edt.temperature_metrics import process_histogram

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams


class EntropyDynamicTemperatureLogitsProcessorV2(LogitsProcessor):
    """Per-request entropy-based dynamic temperature for Model Runner V2."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request_params(sampling_params)

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        self._default = default_from_additional_config(
            getattr(vllm_config, "additional_config", None)
        )
        # theta * ln(1/N) per request slot; 0 = EDT off for that slot.
        self._coefficient_host = np.zeros(req_states.max_num_reqs, dtype=np.float32)
        self._coefficient = torch.zeros(
            req_states.max_num_reqs, dtype=torch.float32, device=req_states.device
        )
        # The request's own temperature T0 per slot, only for the metrics.
        self._t0_host = np.ones(req_states.max_num_reqs, dtype=np.float32)
        self._t0 = torch.ones(
            req_states.max_num_reqs, dtype=torch.float32, device=req_states.device
        )
        self._dirty = False
        self._metrics = process_histogram()

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        edt = request_params(sampling_params, self._default)
        # Slots are recycled: always overwrite the previous occupant's value.
        self._coefficient_host[req_idx] = edt.coefficient
        self._t0_host[req_idx] = sampling_params.temperature
        self._dirty = True
        return edt.enabled

    def apply_staged_writes(self) -> None:
        if self._dirty:
            self._coefficient.copy_(torch.from_numpy(self._coefficient_host))
            self._t0.copy_(torch.from_numpy(self._t0_host))
            self._dirty = False

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not np.any(self._coefficient_host[ctx.idx_mapping_np] > 0.0):
            return logits
        coefficient = self._coefficient[ctx.expanded_idx_mapping]
        entropy = entropy_nats(logits)
        if self._metrics is not None:
            t0 = self._t0[ctx.expanded_idx_mapping]
            self._metrics.observe(applied_temperature(entropy, coefficient, t0),
                                  weights=coefficient > 0.0)
        # Rows without EDT have coefficient 0: multiplied by exactly 1.0, never masked.
        return apply_edt_(logits, entropy, coefficient)
