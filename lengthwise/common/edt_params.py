"""Per-request EDT parameters: where they come from and what is valid.

Requests carry EDT in ``SamplingParams.extra_args`` (what vLLM's OpenAI server
fills from the request's ``vllm_xargs``) under the keys ``edt_theta`` and
``edt_n``; the gateway maps its API field ``edt: {"theta", "n"}`` onto exactly
these keys. A worker-wide default comes from vLLM's ``--additional-config``
(``{"edt": {"theta": 0.5, "n": 0.8}}``) and applies to every request that does
not set ``edt_theta`` itself; ``edt_theta: 0`` opts a request out.

This module imports neither torch nor vLLM so the gateway can validate cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

THETA_KEY = "edt_theta"
N_KEY = "edt_n"
ADDITIONAL_CONFIG_KEY = "edt"
DEFAULT_N = 0.8
"""The paper's base N; T = T0 * N**(theta / H)."""
GREEDY_EPS = 1e-5
"""vLLM's own threshold (``_SAMPLING_EPS``): below it a request is decoded greedily."""


@dataclass(frozen=True)
class EdtParams:
    theta: float = 0.0
    n: float = DEFAULT_N

    @property
    def enabled(self) -> bool:
        return self.theta > 0.0

    @property
    def coefficient(self) -> float:
        """theta * ln(1/N): the logit multiplier is exp(coefficient / H)."""
        return self.theta * math.log(1.0 / self.n) if self.enabled else 0.0


DISABLED = EdtParams()


def _number(name: str, value: Any) -> float:
    # bool is an int subclass; "true" is not a temperature exponent. ValueError on purpose:
    # callers turn it into the API's 400 invalid_value error.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    else:
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def make_params(theta: Any, n: Any = None) -> EdtParams:
    """Validate raw values: theta >= 0 (0 = fixed temperature), 0 < n < 1."""
    theta_value = _number("edt theta", theta)
    if theta_value < 0.0:
        raise ValueError(f"edt theta must be >= 0, got {theta!r}")
    n_value = DEFAULT_N if n is None else _number("edt n", n)
    if not 0.0 < n_value < 1.0:
        raise ValueError(f"edt n must be strictly between 0 and 1, got {n!r}")
    return EdtParams(theta=theta_value, n=n_value)


def default_from_additional_config(additional_config: Any) -> EdtParams:
    """The worker-wide default from vLLM's ``--additional-config`` (disabled if absent)."""
    if not isinstance(additional_config, Mapping):
        return DISABLED
    section = additional_config.get(ADDITIONAL_CONFIG_KEY)
    if section is None:
        return DISABLED
    if not isinstance(section, Mapping) or "theta" not in section:
        raise ValueError(
            f'--additional-config "{ADDITIONAL_CONFIG_KEY}" must be an object with "theta" '
            f'and optionally "n", got {section!r}'
        )
    return make_params(section["theta"], section.get("n"))


def params_from_extra_args(
    extra_args: Mapping[str, Any] | None, default: EdtParams = DISABLED
) -> EdtParams:
    """EDT parameters of one request; raises ValueError (vLLM answers 400) if invalid."""
    if not extra_args or (THETA_KEY not in extra_args and N_KEY not in extra_args):
        return default
    theta = extra_args.get(THETA_KEY, default.theta)
    n = extra_args.get(N_KEY, default.n)
    return make_params(theta, n)


def request_params(sampling_params: Any, default: EdtParams = DISABLED) -> EdtParams:
    """EDT parameters that apply to a vLLM ``SamplingParams``.

    Greedy requests (temperature below vLLM's epsilon) never use EDT: they stay greedy.
    """
    params = params_from_extra_args(getattr(sampling_params, "extra_args", None), default)
    temperature = getattr(sampling_params, "temperature", 1.0)
    if temperature is None or temperature < GREEDY_EPS:
        return DISABLED
    return params
