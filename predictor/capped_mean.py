"""The expected length of a request capped by ``max_tokens``: E[min(Y, cap)], not min(E[Y], cap).

A capped request stops at the cap, so its expected length is below both the
uncapped mean and the cap, and by how much depends on the spread: a prompt whose
answers scatter widely loses more to the cap than one whose answers cluster. The
scheduler ranks by this figure (service time), so it uses it.

Y is taken as log-normal with the predicted mean and the spread of the predicted
p50 and p90 (log p90 - log p50 = 1.2816 sigma); then

    E[min(Y, c)] = m * Phi((ln c - mu - s^2) / s) + c * (1 - Phi((ln c - mu) / s)),
    mu = ln m - s^2 / 2.
"""

from __future__ import annotations

import math

#: z of the 90th percentile of a standard normal
Z90 = 1.2815515655446004
#: below this log spread the distribution is treated as a point at the mean
MIN_SIGMA = 1e-3


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def capped_expectation(mean: float, p50: float, p90: float, cap: float) -> float:
    """E[min(Y, cap)] for Y log-normal with this mean and this p50 -> p90 spread."""
    if cap <= 0:
        return 0.0
    sigma = math.log(max(p90, 1.0) / max(p50, 1.0)) / Z90
    if sigma < MIN_SIGMA or mean <= 0:
        return min(mean, cap)
    mu = math.log(mean) - sigma * sigma / 2.0
    log_cap = math.log(cap)
    below = mean * _phi((log_cap - mu - sigma * sigma) / sigma)
    return min(cap, below + cap * (1.0 - _phi((log_cap - mu) / sigma)))
