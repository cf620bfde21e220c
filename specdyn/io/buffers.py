"""Reusable read buffers for the tensors analyze decomposes.

Reading a checkpoint into fresh memory makes the kernel zero every new page before the read fills it; on the
development VM that zeroing cost about as much CPU as the SVDs' float64 copies (perf: 8% of analyze on GPT-2
small). Buffers that nothing refers to any more are read into again instead. A buffer is reused only when its
reference count shows that no array or view of it is alive, so a reuse can never overwrite data still in use.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# What the pool may keep allocated (in use or free) before it frees idle buffers or hands out untracked ones:
# about the read-ahead window (128 MiB) plus the matrix being decomposed, so the bound on memory moves little.
POOL_BYTES = 384 << 20
# Smaller reads come from the allocator's own free lists, which reuse memory already: not worth tracking.
MIN_POOLED = 1 << 20


def _idle_refs() -> int | None:
    """The reference count `BufferPool._idle` sees for a buffer nothing else holds (2 on CPython 3.11: the list
    and getrefcount's argument), measured the way `_idle` measures it, since interpreters differ in what they
    count; None (no reuse at all) unless a view of the buffer visibly adds to it, as every view must."""
    buffers = [np.empty(1)]
    idle = sys.getrefcount(buffers[0])
    view = buffers[0][:]  # noqa: F841  alive while the count is taken
    return idle if sys.getrefcount(buffers[0]) > idle else None


# every array or view of a buffer refers to it (views refer to the array that owns the memory)
_IDLE_REFS = _idle_refs()


class BufferPool:
    """Hands out uint8 buffers of a requested size, reusing idle ones (thread-safe)."""

    def __init__(self, limit: int = POOL_BYTES):
        self.limit = limit
        self.buffers: list[np.ndarray] = []
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of `nbytes` (a view of a pooled buffer, or a fresh one): contents undefined."""
        if nbytes < MIN_POOLED:
            return np.empty(nbytes, dtype=np.uint8)
        with self.lock:
            # at most twice the size asked for, so one large idle buffer does not hold many small reads
            fits = [i for i in range(len(self.buffers)) if nbytes <= self.buffers[i].nbytes <= 2 * nbytes]
            idle = [i for i in fits if self._idle(i)]
            if idle:
                return self.buffers[min(idle, key=lambda i: self.buffers[i].nbytes)][:nbytes]
            self._make_room(nbytes)
            fresh = np.empty(nbytes, dtype=np.uint8)
            if self.held() + nbytes <= self.limit:
                self.buffers.append(fresh)
            return fresh

    def _idle(self, i: int) -> bool:
        return _IDLE_REFS is not None and sys.getrefcount(self.buffers[i]) == _IDLE_REFS

    def held(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    def _make_room(self, nbytes: int) -> None:
        """Free idle buffers (largest first) until `nbytes` more fit under the limit."""
        idle = sorted((i for i in range(len(self.buffers)) if self._idle(i)), key=lambda i: -self.buffers[i].nbytes)
        drop, held = set(), self.held()
        for i in idle:
            if held + nbytes <= self.limit:
                break
            drop.add(i)
            held -= self.buffers[i].nbytes
        self.buffers = [b for i, b in enumerate(self.buffers) if i not in drop]

    def clear(self) -> None:
        """Forget every buffer (those still in use stay alive as long as their arrays)."""
        with self.lock:
            self.buffers = []


POOL = BufferPool()
