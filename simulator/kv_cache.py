"""Paged KV blocks with automatic prefix caching, as vLLM V1's ``BlockPool`` keeps them.

vLLM (``vllm/v1/core/block_pool.py``, ``kv_cache_manager.py``) keeps every free
block in one queue in eviction order. A request's full blocks carry a hash of
their content (chained over the prefix); when a request ends *or is preempted*
its blocks go to the queue's tail, last block first, still hashed. A new
allocation takes blocks from the head and only then forgets their hashes. So a
preempted request that is scheduled again finds the prefix of its own blocks that
nobody has reused yet and recomputes only the rest; requests that share a prompt
prefix share its blocks.

Hashes here are opaque keys: ``(request_id, i)`` for content unique to a request,
or the trace's own prefix ids (Mooncake's ``hash_ids``) for shared prompts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence


class BlockPool:
    """``num_blocks`` blocks; free ones in an LRU queue, cached ones findable by hash."""

    __slots__ = ("_cached", "_free", "_hash", "_ref", "caching", "num_blocks")

    def __init__(self, num_blocks: int, caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the pool needs at least one block")
        self.num_blocks = num_blocks
        self.caching = caching
        # insertion order is eviction order: the head is reused first
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._ref = [0] * num_blocks
        self._hash: list[Hashable | None] = [None] * num_blocks
        self._cached: dict[Hashable, int] = {}

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take (free, whether or not they still hold a cached prefix)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue, evicting their cached content."""
        if n > len(self._free):
            raise ValueError(f"asked for {n} blocks, {len(self._free)} free")
        out = []
        popitem = self._free.popitem
        for _ in range(n):
            block, _ = popitem(last=False)
            h = self._hash[block]
            if h is not None:
                self._hash[block] = None
                if self._cached.get(h) == block:
                    del self._cached[h]
            self._ref[block] = 1
            out.append(block)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Release a request's blocks; the last block goes in first, so it is evicted first."""
        ref = self._ref
        free = self._free
        for block in reversed(blocks):
            ref[block] -= 1
            if ref[block] == 0:
                free[block] = None

    def cache(self, block: int, key: Hashable) -> None:
        """Mark a full block as holding ``key``'s content (a duplicate of a cached key is not
        findable, as vLLM keeps the first)."""
        if self.caching and key not in self._cached:
            self._hash[block] = key
            self._cached[key] = block

    def lookup(self, keys: Iterable[Hashable]) -> list[int]:
        """The blocks of the longest cached prefix of ``keys``."""
        hits = []
        cached = self._cached
        for key in keys:
            block = cached.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def evictable(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` sit in the free queue (a hit on them uses up free blocks)."""
        return sum(1 for b in blocks if self._ref[b] == 0)

    def touch(self, blocks: Sequence[int]) -> None:
        """A request reuses cached blocks: take them out of the free queue."""
        ref = self._ref
        free = self._free
        for block in blocks:
            if ref[block] == 0:
                del free[block]
            ref[block] += 1
