"""EDT as a logits processor for vLLM's V1 model runner (the CPU build's runner).

Load it with ``--logits-processors lengthwise.worker.edt.vllm_v1:EntropyDynamicTemperatureLogitsProcessor``.

Where the V1 sampler calls it (``vllm/v1/sample/sampler.py``): the processor
declares itself argmax-invariant (it only multiplies a row by a positive
factor), so it runs inside ``Sampler.sample`` *after* penalties, masks and
``apply_temperature`` (the row already holds z / T0) and *after* the built-in
min-p processor, but before top-k/top-p. Hence:

* entropy is taken of softmax(x * T0) = softmax(z), the model's distribution
  after penalties and masks, undoing the temperature division the sampler did;
* the row is multiplied by T0 / T = exp(theta * ln(1/N) / H), so the sampler
  ends up drawing from softmax(z / (T0 * N**(theta/H))).

Interaction with truncation, V1 runner: top-k and top-p apply after EDT, to the
EDT-tempered distribution (top-k's set is unchanged by any temperature; top-p's
nucleus shrinks as EDT cools). min-p runs *before* EDT here, at T0: its kept
set is the one fixed temperature T0 would keep, and tokens it removed count as
p = 0 in H. (Model Runner V2 applies min-p after EDT; see ``vllm_mrv2``.)
Greedy rows (temperature 0) and all-greedy batches never reach this processor;
rows without EDT are never read or written.

With ``LENGTHWISE_EDT_METRICS_PORT`` set in the worker's environment, the applied
temperature of every EDT row is counted in a histogram served on that port
(``lengthwise.worker.edt.temperature_metrics``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from lengthwise.common.edt_params import default_from_additional_config, request_params
from lengthwise.worker.edt.formula import applied_temperature, apply_edt_, entropy_nats
from lengthwise.worker.edt.temperature_metrics import process_histogram

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


class EntropyDynamicTemperatureLogitsProcessor(LogitsProcessor):
    """Per-request entropy-based dynamic temperature, vectorised over the batch."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        # Runs in the API server: a bad edt_theta / edt_n becomes an HTTP 400.
        request_params(sampling_params)

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool
    ) -> None:
        max_num_reqs = vllm_config.scheduler_config.max_num_seqs
        self._default = default_from_additional_config(
            getattr(vllm_config, "additional_config", None)
        )
        self._device = device
        # Host copies indexed by persistent-batch row; coefficient 0 = EDT off.
        self._coefficient = np.zeros(max_num_reqs, dtype=np.float32)
        self._t0 = np.ones(max_num_reqs, dtype=np.float32)
        self._rows: torch.Tensor | None = None
        self._row_coefficient = torch.empty(0)
        self._row_t0 = torch.empty(0)
        self._metrics = process_histogram()

    def is_argmax_invariant(self) -> bool:
        # Scaling a row by a positive factor never changes its argmax.
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        coefficient, t0 = self._coefficient, self._t0
        for index in batch_update.removed:
            coefficient[index] = 0.0
        for index, params, _prompt_ids, _output_ids in batch_update.added:
            edt = request_params(params, self._default)
            coefficient[index] = edt.coefficient
            t0[index] = params.temperature if edt.enabled else 1.0
        for src, dst, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                coefficient[[src, dst]] = coefficient[[dst, src]]
                t0[[src, dst]] = t0[[dst, src]]
            else:
                coefficient[dst], t0[dst] = coefficient[src], t0[src]
                coefficient[src] = 0.0
        self._refresh(batch_update.batch_size)

    def _refresh(self, batch_size: int) -> None:
        active = np.flatnonzero(self._coefficient[:batch_size] > 0.0)
        if active.size == 0:
            self._rows = None
            return
        self._rows = torch.from_numpy(active).to(self._device, non_blocking=True)
        self._row_coefficient = torch.from_numpy(self._coefficient[active].copy()).to(
            self._device, non_blocking=True
        )
        self._row_t0 = torch.from_numpy(self._t0[active].copy()).to(
            self._device, non_blocking=True
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            return logits
        scaled = logits.index_select(0, self._rows)  # z / T0 for the EDT rows
        entropy = entropy_nats(scaled * self._row_t0.unsqueeze(1))
        if self._metrics is not None:
            self._metrics.observe(
                applied_temperature(entropy, self._row_coefficient, self._row_t0))
        logits.index_copy_(0, self._rows, apply_edt_(
            scaled, entropy, self._row_coefficient, host_check=scaled.device.type == "cpu"
        ))
        return logits
