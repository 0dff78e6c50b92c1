"""When failed requests take a worker out of rotation: passive health checking.

Modelled on Envoy's outlier detection, the established practice for a proxy in front
of a pool of equivalent servers:

* a worker is *ejected* after ``consecutive_failures`` failed requests in a row (a 5xx
  answer, a time-out, a stream the worker cut off); any answer in between resets the
  count, so one slow or failing request never takes a worker out;
* an ejection lasts ``base_ejection_s`` times the number of times the worker has been
  ejected (capped at ``max_ejection_s``), so a worker that keeps failing stays out
  longer; the count falls by one for every ``base_ejection_s`` it then stays in;
* after its ejection time the worker returns only once a health probe has made it
  generate a token (``server.backends.WorkerMonitor``);
* at most ``max_ejected_share`` of the workers are ejected at once (rounded down), and
  never the last worker in rotation: when failures are caused by load, or by the
  requests themselves, ejecting would only move all the load to fewer workers, or
  turn every request into a 503.

Active health checks are separate (``server.backends``): a worker that refuses
connections, or whose ``/health`` fails ``unhealthy_after_failures`` probes in a row,
or that cannot generate one token while requests wait on it (a hung engine), is taken
out whatever these limits say, and returns when its probes pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Failed health probes in a row that take a worker out (active health checking), as
#: Kubernetes' default ``failureThreshold``: one slow probe on a busy worker is no outage.
UNHEALTHY_AFTER_FAILED_PROBES = 3


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_share: float = 0.5

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if not (0 < self.base_ejection_s <= self.max_ejection_s):
            raise ValueError("need 0 < base_ejection_s <= max_ejection_s")
        if not 0 <= self.max_ejected_share <= 1:
            raise ValueError("max_ejected_share must be within [0, 1]")

    def ejection_s(self, times_ejected: int) -> float:
        """How long the ``times_ejected``-th ejection (counting this one) lasts."""
        return min(self.max_ejection_s, self.base_ejection_s * max(1, times_ejected))

    def times_after_rest(self, times_ejected: int, rested_s: float) -> int:
        """The ejection count after ``rested_s`` in rotation without an ejection."""
        return max(0, times_ejected - math.floor(rested_s / self.base_ejection_s))

    def may_eject(self, *, listed: int, ejected: int, in_rotation: int) -> bool:
        """Whether one more worker may be ejected, given the pool's counts now."""
        return in_rotation > 1 and ejected + 1 <= math.floor(self.max_ejected_share * listed)
