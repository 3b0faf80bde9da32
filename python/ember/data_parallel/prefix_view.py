"""The router's approximate picture of which prompt blocks one replica holds in its prefix cache."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence


class PrefixView:
    """Block hashes a replica probably still caches, least recently used first.

    The replica's block pool evicts its least recently used free blocks, so an LRU set of the hashes routed
    to it, bounded by an estimated capacity in blocks, predicts its hits. The estimate starts at the
    replica's whole pool and is calibrated by each response: a hit shorter than predicted means blocks the
    view still lists were evicted (running requests hold part of the pool), so it shrinks; a longer one
    grows it back, never beyond the pool. Blocks whose request has not finished its prefill yet are pending:
    a request that matched one of them may legitimately miss, so its response does not calibrate.
    """

    def __init__(self, num_blocks: int, min_blocks: int = 1) -> None:
        self.max_blocks = max(num_blocks, min_blocks)
        """The replica's whole KV pool in blocks: the most the view ever holds."""
        self.min_blocks = min(min_blocks, self.max_blocks)
        """The least the capacity estimate shrinks to."""
        self.capacity_blocks = self.max_blocks
        """How many blocks the view currently believes stay cached."""
        self._hashes: OrderedDict[int, None] = OrderedDict()
        self._pending: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._hashes)

    def num_matched_blocks(self, block_hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt the replica probably holds (a chain breaks at the first miss)."""
        num_matched = 0
        for block_hash in block_hashes:
            if block_hash not in self._hashes:
                break
            num_matched += 1
        return num_matched

    def is_confirmed(self, block_hashes: Sequence[int]) -> bool:
        """Whether none of these blocks waits for a prefill still running."""
        return not any(h in self._pending for h in block_hashes)

    def insert(self, block_hashes: Sequence[int]) -> None:
        """Records that the replica computes (or reuses) these blocks now: they become the most recently used,
        pending until `confirm`."""
        for block_hash in block_hashes:
            self._hashes[block_hash] = None
            self._hashes.move_to_end(block_hash)
            self._pending[block_hash] += 1
        self._trim()

    def confirm(self, block_hashes: Sequence[int]) -> None:
        """Records that the prefill which inserted these blocks ended (with its first output, or failed)."""
        for block_hash in block_hashes:
            count = self._pending.get(block_hash, 0) - 1
            if count > 0:
                self._pending[block_hash] = count
            else:
                self._pending.pop(block_hash, None)

    def calibrate(self, num_predicted_blocks: int, num_actual_blocks: int) -> None:
        """Adjusts the capacity estimate by how far a prediction was from the replica's reported hit."""
        error = num_actual_blocks - num_predicted_blocks
        self.capacity_blocks = min(self.max_blocks, max(self.min_blocks, self.capacity_blocks + error))
        self._trim()

    def clear(self) -> None:
        """Forgets everything (the replica restarted with an empty cache)."""
        self._hashes.clear()
        self._pending.clear()
        self.capacity_blocks = self.max_blocks

    def _trim(self) -> None:
        while len(self._hashes) > self.capacity_blocks:
            self._hashes.popitem(last=False)
