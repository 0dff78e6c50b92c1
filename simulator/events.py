"""Event heap and virtual clock. No policy code lives here.

Events are ordered by ``(time, phase, seq)``. The phase makes same-time
ordering explicit (BLIS ``sim/event.go`` does the same):

1. ``STEP_END``: an engine step finishes; its tokens are emitted, finished
   requests free their KV blocks and their gateway slot.
2. ``ARRIVAL``: a client request reaches the gateway and may be dispatched.
3. ``STEP_START``: an engine schedules its next batch. It runs after every
   same-time completion and arrival, so a request arriving exactly when a step
   ends joins the next batch, as it would in vLLM's busy loop.

``seq`` is a per-loop counter, so events of equal time and phase run in the
order they were pushed (FIFO) and the order never depends on object identity.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from enum import IntEnum
from typing import Any


class Phase(IntEnum):
    STEP_END = 0
    ARRIVAL = 1
    STEP_START = 2


Handler = Callable[[float, Any], None]


class EventLoop:
    """A virtual clock plus a heap of pending callbacks."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Handler, Any]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.events_handled = 0

    def schedule(self, time: float, phase: Phase, handler: Handler, payload: Any = None) -> None:
        if time < self.now:
            raise ValueError(f"cannot schedule an event in the past ({time} < {self.now})")
        heapq.heappush(self._heap, (time, int(phase), next(self._seq), handler, payload))

    def __len__(self) -> int:
        return len(self._heap)

    def next_time(self) -> float:
        """Time of the earliest pending event (infinity when none)."""
        return self._heap[0][0] if self._heap else float("inf")

    def run(self, until: float | None = None, on_event: Callable[[], None] | None = None) -> None:
        """Pop -> handle until the heap is empty (or the clock passes ``until``)."""
        heap = self._heap
        pop = heapq.heappop
        handled = 0
        while heap:
            if until is not None and heap[0][0] > until:
                break
            time, _phase, _seq, handler, payload = pop(heap)
            self.now = time
            handler(time, payload)
            handled += 1
            if on_event is not None:
                on_event()
        self.events_handled += handled
