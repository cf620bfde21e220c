"""Named write boundaries, so tests can kill a writer at an exact point instead of racing it with sleeps.

Every place where a killed writer could leave the store in a new state calls `point(name)`. It does nothing
unless a test set `handler` (in-process) or the environment variable SPECDYN_FAULT_AT: `NAME` kills the process
with SIGKILL the first time it reaches that boundary, `NAME#N` the N-th time, and `#N` at the N-th boundary of
any name (counting from 1), which is how tests/test_faults.py kills analyze at every boundary in turn.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

handler: Callable[[str], None] | None = None  # tests: called with every boundary's name
_seen: Counter = Counter()


def point(name: str) -> None:
    """A write boundary: what the store holds now is a state a kill may leave behind."""
    if handler is not None:
        handler(name)
    target = os.environ.get("SPECDYN_FAULT_AT")
    if not target:
        return
    _seen[name] += 1
    _seen["#"] += 1
    want, _, n = target.partition("#")
    if (want or "#") in (name, "#") and _seen[name if want else "#"] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
