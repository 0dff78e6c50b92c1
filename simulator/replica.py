"""A vLLM-V1-like engine: continuous batching, chunked prefill, paged KV with prefix
caching, preemption by recompute, asynchronous scheduling.

It follows ``vllm/v1/core/sched/scheduler.py`` ``Scheduler.schedule``:

* There are no prefill/decode phases. Each request has ``num_computed_tokens``
  and ``num_tokens`` (prompt + generated so far); every step tries to let
  ``num_computed_tokens`` catch up.
* RUNNING requests are scheduled first, in running-list order, each taking
  ``min(num_tokens - num_computed, token_budget)`` tokens (chunked prefill;
  ``long_prefill_token_threshold`` = 0, vLLM's default).
* KV slots are allocated in blocks of ``block_size`` tokens from a
  :class:`~simulator.kv_cache.BlockPool` (blocks for ``num_computed + new``
  tokens). When blocks run out, a victim is preempted *by recompute*: its
  blocks go back to the pool, ``num_computed_tokens`` resets to 0 and it goes to
  the front of the waiting queue. The victim is ``running[-1]`` under FCFS, the
  max ``(priority, arrival_time)`` under the priority policy; the choice is
  :func:`server.policy.choose_preemption_victim`. If the request being
  scheduled is itself the victim, running-request scheduling stops.
* WAITING requests are admitted only if nothing was preempted this step, while
  token budget remains and fewer than ``max_num_seqs`` requests run; the first
  one whose blocks do not fit stops admission (head-of-line, as vLLM). With
  prefix caching (vLLM's default) a request first looks up the longest cached
  prefix of its blocks (at most ``num_tokens - 1`` tokens) and computes only the
  rest: a preempted request finds whatever of its own blocks nobody has reused
  since, so recompute costs far less than a whole re-prefill.
* The waiting queue is FCFS (deque) or priority (heap on ``(priority,
  arrival_time, request_id)``, ``vllm/v1/request.py`` ``Request.__lt__``).
* After the forward pass, a request whose ``num_computed_tokens`` reached
  ``num_tokens`` samples one token (the first one ends its prefill). It
  finishes when it has ``output_tokens`` tokens.

**Asynchronous scheduling** (vLLM's default since 0.14, ``EngineConfig.async_scheduling``):
the engine core schedules step N+1 while step N runs on the GPU, so the batch for
N+1 is fixed at the *start* of N. The simulator keeps the synchronous step loop
and shifts what that schedule can see by one step, which is exact because output
lengths are known (vLLM likewise never schedules a step past ``max_tokens``):
a request that reaches the engine while step N runs first runs in step N+2 (the
batch of N+1 was fixed when N started), and the slot and KV blocks of a request
that finishes in step N are reusable from step N+2. When the engine had nothing
to schedule ahead (the pipeline drained), there is no lag. This is what
makes a lone request's TTFT on a busy engine one step longer than the synchronous
loop gives.

Fast-forward (an exact shortcut, on by default): while every running request
is decoding, no waiting request can be admitted, nobody finishes and no other
event falls inside the step, consecutive steps are identical apart from
their KV length and block needs. They are advanced in one pass, O(1) per
step, without heap events; the result is the same to the last bit as
stepping one by one (``tests/simulator`` checks this).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from server.policy import EngineQueueMode, RunningSeq, choose_preemption_victim

from .events import EventLoop, Phase
from .kv_cache import BlockPool
from .latency import BatchShape, StepLatencyModel


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """vLLM engine arguments the simulator models."""

    #: ``--max-num-seqs``: most requests in the running batch
    max_num_seqs: int = 256
    #: ``--max-num-batched-tokens``: per-step token budget
    max_num_batched_tokens: int = 2048
    #: KV cache capacity in tokens (``num_gpu_blocks * block_size``)
    kv_cache_tokens: int = 262_144
    #: ``--block-size``: tokens per KV block
    block_size: int = 16
    #: ``--scheduling-policy``: waiting-queue order and preemption victim choice
    queue_mode: EngineQueueMode = EngineQueueMode.FCFS
    #: ``--enable-chunked-prefill``; when off, a waiting request whose whole
    #: prefill exceeds the remaining token budget stops admission for this step
    #: (vLLM breaks out of the waiting loop instead of chunking it)
    chunked_prefill: bool = True
    #: ``--enable-prefix-caching`` (vLLM's default): freed blocks keep their content
    #: until reused, so a preempted request or a shared prompt prefix skips recompute
    prefix_caching: bool = True
    #: ``--async-scheduling`` (vLLM's default since 0.14): step N+1 is scheduled while
    #: step N runs (see the module docstring)
    async_scheduling: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and block_size must be >= 1")
        if self.kv_cache_tokens < self.block_size:
            raise ValueError("kv_cache_tokens must hold at least one block")

    @property
    def num_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size


class Seq:
    """Engine-side state of one request (vLLM's ``Request``)."""

    __slots__ = (
        "blocks",
        "engine_arrival",
        "finished",
        "first_scheduled",
        "first_token",
        "num_cached_blocks",
        "num_computed",
        "num_generated",
        "num_tokens",
        "output_tokens",
        "payload",
        "preemptions",
        "prefix_keys",
        "priority",
        "prompt_tokens",
        "recomputed_tokens",
        "request_id",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        output_tokens: int,
        priority: int,
        engine_arrival: float,
        payload: object = None,
        prefix_keys: tuple[Hashable, ...] = (),
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.priority = priority
        self.engine_arrival = engine_arrival
        self.num_tokens = prompt_tokens
        self.num_computed = 0
        self.num_generated = 0
        self.blocks: list[int] = []
        #: how many leading blocks are registered in the prefix cache
        self.num_cached_blocks = 0
        #: content keys of the leading prompt blocks that other requests may share
        self.prefix_keys = prefix_keys
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.finished: float | None = None
        self.preemptions = 0
        #: tokens computed again after a preemption (what the prefix cache did not save)
        self.recomputed_tokens = 0
        self.payload = payload

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_key(self, i: int) -> Hashable:
        keys = self.prefix_keys
        return keys[i] if i < len(keys) else (self.request_id, i)

    def block_keys(self, n: int) -> Iterator[Hashable]:
        return (self.block_key(i) for i in range(n))

    def __lt__(self, other: Seq) -> bool:
        # vLLM Request.__lt__: priority, then arrival_time, then request_id.
        return (self.priority, self.engine_arrival, self.request_id) < (
            other.priority,
            other.engine_arrival,
            other.request_id,
        )


class _FCFSQueue:
    """vLLM ``FCFSRequestQueue``: a deque; preempted requests go to the front."""

    def __init__(self) -> None:
        self._q: deque[Seq] = deque()

    def add(self, seq: Seq) -> None:
        self._q.append(seq)

    def prepend(self, seq: Seq) -> None:
        self._q.appendleft(seq)

    def peek(self) -> Seq:
        return self._q[0]

    def pop(self) -> Seq:
        return self._q.popleft()

    def __len__(self) -> int:
        return len(self._q)


class _PriorityQueue:
    """vLLM ``PriorityRequestQueue``: a heap; prepend is just add."""

    def __init__(self) -> None:
        self._h: list[Seq] = []

    def add(self, seq: Seq) -> None:
        heapq.heappush(self._h, seq)

    prepend = add

    def peek(self) -> Seq:
        return self._h[0]

    def pop(self) -> Seq:
        return heapq.heappop(self._h)

    def __len__(self) -> int:
        return len(self._h)


@dataclass(slots=True)
class StepRecord:
    """One step, for invariant checks (kept only when ``record_steps`` is on)."""

    start: float
    end: float
    num_scheduled_tokens: int
    num_running: int
    used_blocks: int


FinishCallback = Callable[["Replica", Seq, float], None]


class Replica:
    """One simulated vLLM worker on the shared event loop."""

    def __init__(
        self,
        worker_id: str,
        config: EngineConfig,
        latency: StepLatencyModel,
        loop: EventLoop,
        on_finish: FinishCallback,
        record_steps: bool = False,
        fast_forward: bool = True,
    ) -> None:
        self.worker_id = worker_id
        self.config = config
        self.latency = latency
        self.loop = loop
        self.on_finish = on_finish
        self.waiting: _FCFSQueue | _PriorityQueue = (
            _PriorityQueue() if config.queue_mode == EngineQueueMode.PRIORITY else _FCFSQueue()
        )
        self.running: list[Seq] = []
        self.pool = BlockPool(config.num_blocks, caching=config.prefix_caching)
        self.total_blocks = config.num_blocks
        self.busy = False
        self._step_pending = False
        self._scheduled: list[Seq] = []
        self._scheduled_n: list[int] = []
        # asynchronous scheduling (module docstring): requests the engine has received
        # but the next schedule cannot see yet, finished requests whose slot and blocks
        # the next schedule cannot reuse yet, and whether a step was scheduled ahead
        self._staged: deque[Seq] = deque()
        self._just_finished: list[Seq] = []
        self._lagged: list[Seq] = []
        self._pipelined = False
        self._last_boundary = 0.0
        # statistics
        self.num_steps = 0
        self.num_preemptions = 0
        self.peak_used_blocks = 0
        self.busy_time = 0.0
        self.generated_tokens = 0
        self.prefix_hit_tokens = 0
        self.record_steps = record_steps
        self.fast_forward = fast_forward
        self._last_dt = 0.0
        self.steps: list[StepRecord] = []

    # --- requests in -------------------------------------------------------

    def add_request(self, seq: Seq, now: float) -> None:
        """The gateway dispatched ``seq`` (vLLM ``add_request``)."""
        if self.config.async_scheduling and (self.busy or self._step_pending):
            self._staged.append(seq)
        else:
            self.waiting.add(seq)
        self._wake(now)

    def _wake(self, now: float) -> None:
        if not self.busy and not self._step_pending:
            self._step_pending = True
            self.loop.schedule(now, Phase.STEP_START, self._start_step)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self._staged)

    @property
    def free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.pool.num_free

    # --- blocks ---------------------------------------------------------------

    def _cache_full_blocks(self, seq: Seq, tokens: int) -> None:
        """Register ``seq``'s blocks that ``tokens`` computed tokens fill."""
        full = min(tokens // self.config.block_size, len(seq.blocks))
        pool = self.pool
        for i in range(seq.num_cached_blocks, full):
            pool.cache(seq.blocks[i], seq.block_key(i))
        seq.num_cached_blocks = max(seq.num_cached_blocks, full)

    def _release(self, seq: Seq) -> None:
        """Give a request's blocks back to the pool (they stay cached until reused)."""
        self._cache_full_blocks(seq, seq.num_computed)
        self.pool.free(seq.blocks)
        seq.blocks = []
        seq.num_cached_blocks = 0

    # --- one step -----------------------------------------------------------

    def _preempt(self, victim: Seq) -> None:
        self._release(victim)
        victim.num_computed = 0
        victim.preemptions += 1
        self.num_preemptions += 1
        self.waiting.prepend(victim)

    def _choose_victim(self) -> int:
        running = self.running
        if self.config.queue_mode == EngineQueueMode.FCFS:
            # choose_preemption_victim returns the tail under FCFS; skip
            # building the view list for the common case.
            return len(running) - 1
        view = [RunningSeq(s.request_id, s.priority, s.engine_arrival) for s in running]
        return choose_preemption_victim(view, self.config.queue_mode)

    def schedule(self) -> tuple[list[Seq], list[int]]:
        """One call of vLLM's ``Scheduler.schedule``; allocates KV blocks."""
        cfg = self.config
        bs = cfg.block_size
        pool = self.pool
        budget = cfg.max_num_batched_tokens
        running = self.running
        sched: list[Seq] = []
        sched_n: list[int] = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            need = (seq.num_computed + n + bs - 1) // bs - len(seq.blocks)
            scheduled_self = True
            while need > pool.num_free:
                v = self._choose_victim()
                victim = running.pop(v)
                if victim is not seq and victim.blocks and victim in sched:
                    # Priority mode may pick a request already scheduled this
                    # step: give its tokens back (vLLM restores token_budget).
                    j = sched.index(victim)
                    budget += sched_n[j]
                    del sched[j]
                    del sched_n[j]
                if v < i:
                    i -= 1
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    scheduled_self = False
                    break
            if not scheduled_self:
                break
            if need:
                seq.blocks.extend(pool.allocate(need))
            if n > 1:
                self._cache_full_blocks(seq, seq.num_computed + n)
            sched.append(seq)
            sched_n.append(n)
            budget -= n
            i += 1

        if not preempted:
            waiting = self.waiting
            slots = cfg.max_num_seqs - len(self._lagged)
            caching = pool.caching
            while budget > 0 and len(waiting) and len(running) < slots:
                seq = waiting.peek()
                hits: list[int] = []
                if caching:
                    # vLLM recomputes at least the last token (max hit: num_tokens - 1)
                    hits = pool.lookup(seq.block_keys((seq.num_tokens - 1) // bs))
                computed = len(hits) * bs
                n = seq.num_tokens - computed
                if n > budget and not cfg.chunked_prefill:
                    break
                n = min(n, budget)
                need = (computed + n + bs - 1) // bs - len(hits)
                if need + (pool.evictable(hits) if hits else 0) > pool.num_free:
                    break
                waiting.pop()
                if hits:
                    pool.touch(hits)
                    self.prefix_hit_tokens += computed
                seq.blocks = hits + pool.allocate(need)
                seq.num_cached_blocks = len(hits)
                seq.num_computed = computed
                if seq.preemptions:
                    seq.recomputed_tokens += seq.num_tokens - computed
                running.append(seq)
                if n > 1:
                    self._cache_full_blocks(seq, computed + n)
                sched.append(seq)
                sched_n.append(n)
                budget -= n
        return sched, sched_n

    def _boundary(self, now: float) -> None:
        """What becomes visible to the schedule made at this step boundary."""
        for seq in self._lagged:
            self._release(seq)
        self._lagged = []
        lag = self._pipelined
        if lag:
            self._lagged, self._just_finished = self._just_finished, []
        else:
            for seq in self._just_finished:
                self._release(seq)
            self._just_finished = []
        staged = self._staged
        if staged:
            cutoff = self._last_boundary if lag else now
            while staged and staged[0].engine_arrival <= cutoff:
                self.waiting.add(staged.popleft())

    def _skip_steady_decode(self, now: float) -> float:
        """Advance through steady pure-decode steps; returns the next step's start."""
        running = self.running
        n = len(running)
        cfg = self.config
        if n == 0 or n > cfg.max_num_batched_tokens or self._staged or self._lagged:
            return now
        if len(self.waiting) and n < cfg.max_num_seqs:
            return now  # a waiting request would be admitted
        next_t = self.loop.next_time()
        if next_t - now <= self._last_dt:
            # The next event almost surely lands inside the first step: skip
            # the O(n) scan (a pure speed heuristic; stepping is exact either way).
            return now
        bs = cfg.block_size
        classes: list[list[Seq]] = [[] for _ in range(bs)]  # seqs by num_computed mod bs
        kv_sum = 0
        kv_max = 0
        kv_min = 1 << 62
        min_left = 1 << 62
        for s in running:
            c = s.num_computed
            if c + 1 != s.num_tokens or c < s.prompt_tokens:
                return now  # still prefilling
            left = s.output_tokens - s.num_generated
            min_left = min(min_left, left)
            kv_sum += c + 1
            kv_max = max(kv_max, c + 1)
            kv_min = min(kv_min, c + 1)
            classes[c % bs].append(s)
        max_skip = min_left - 1  # the step that emits someone's last token runs normally
        if max_skip <= 0:
            return now
        pool = self.pool
        step_time = self.latency.step_time
        total = self.total_blocks
        record = self.record_steps
        t = now
        m = 0
        while m < max_skip:
            # a seq needs a new block when its computed count is a multiple of bs
            grow = classes[(-m) % bs]
            if len(grow) > pool.num_free:
                break  # would preempt: leave it to the real scheduler
            dt = step_time(BatchShape([], [], n, kv_sum, kv_max + m, kv_min + m))
            end = t + dt
            if end >= next_t:
                break  # an event lands inside this step
            if grow:
                for s, block in zip(grow, pool.allocate(len(grow))):
                    s.blocks.append(block)
            if record:
                self.steps.append(StepRecord(t, end, n, n, total - pool.num_free))
            self.busy_time += dt
            kv_sum += n
            t = end
            m += 1
        if m == 0:
            return now
        for s in running:
            s.num_computed += m
            s.num_tokens += m
            s.num_generated += m
        self.num_steps += m
        self.generated_tokens += n * m
        self.peak_used_blocks = max(self.peak_used_blocks, total - pool.num_free)
        return t

    def _start_step(self, now: float, _payload: object = None) -> None:
        self._step_pending = False
        self._boundary(now)
        if self.fast_forward:
            now = self._skip_steady_decode(now)
        sched, sched_n = self.schedule()
        if not sched and self._staged:
            # The engine would idle: it takes whatever has arrived, at once.
            while self._staged:
                self.waiting.add(self._staged.popleft())
            sched, sched_n = self.schedule()
        self._last_boundary = now
        if not sched:
            self.busy = False
            self._pipelined = False
            if self._lagged:
                self._wake(now)  # release them at the next boundary, now
            return
        prefill_chunks: list[int] = []
        prefill_ctx: list[int] = []
        num_decode = 0
        decode_kv = 0
        kv_max = 0
        kv_min = 1 << 62
        ending = 0
        for seq, n in zip(sched, sched_n):
            if seq.first_scheduled is None:
                seq.first_scheduled = now
            c = seq.num_computed
            if c + n >= seq.num_tokens and seq.num_generated + 1 >= seq.output_tokens:
                ending += 1
            if n == 1 and c + 1 == seq.num_tokens and c >= seq.prompt_tokens:
                num_decode += 1
                decode_kv += c + 1
                kv_max = max(kv_max, c + 1)
                kv_min = min(kv_min, c + 1)
            else:
                prefill_chunks.append(n)
                prefill_ctx.append(c)
        dt = self.latency.step_time(BatchShape(prefill_chunks, prefill_ctx, num_decode, decode_kv,
                                               kv_max, kv_min if num_decode else 0))
        used = self.total_blocks - self.pool.num_free
        self.peak_used_blocks = max(self.peak_used_blocks, used)
        end = now + dt
        if self.record_steps:
            self.steps.append(StepRecord(now, end, sum(sched_n), len(self.running), used))
        # Async scheduling: the engine schedules the step after this one now, if it has
        # anything to give it (a request that keeps running, or one waiting).
        self._pipelined = self.config.async_scheduling and (
            len(self.running) > ending or len(self.waiting) > 0
            or bool(self._staged and self._staged[0].engine_arrival <= now))
        self.busy = True
        self.num_steps += 1
        self.busy_time += dt
        self._last_dt = dt
        self._scheduled = sched
        self._scheduled_n = sched_n
        self.loop.schedule(end, Phase.STEP_END, self._end_step)

    def _end_step(self, now: float, _payload: object = None) -> None:
        """vLLM ``update_from_output``: advance tokens, sample, finish."""
        finished: list[Seq] = []
        generated = 0
        for seq, n in zip(self._scheduled, self._scheduled_n):
            seq.num_computed += n
            if seq.num_computed >= seq.num_tokens:
                seq.num_generated += 1
                seq.num_tokens += 1
                generated += 1
                if seq.first_token is None:
                    seq.first_token = now
                if seq.num_generated >= seq.output_tokens:
                    seq.finished = now
                    finished.append(seq)
        self.generated_tokens += generated
        self._scheduled = []
        self._scheduled_n = []
        self.busy = False
        if finished:
            done = set(map(id, finished))
            self.running = [s for s in self.running if id(s) not in done]
            self._just_finished.extend(finished)
            for seq in finished:
                self.on_finish(self, seq, now)
        if self.running or len(self.waiting) or self._staged or self._just_finished:
            self._wake(now)
