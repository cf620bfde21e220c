"""The store's exclusive lock: a file inside the store, locked with flock (released by the OS if the process dies)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from specdyn.errors import EXIT_STORE_BUSY, SpecdynError
from specdyn.store.layout import LOCK_NAME


def acquire_lock(path: Path, purpose: str = "analyze"):
    """Take the store's exclusive lock and return its open file, or refuse clearly if another process holds it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise SpecdynError(
            f"{path}: the store is in use by {holder}; wait for it to finish (or stop it) and rerun",
            code=EXIT_STORE_BUSY,
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"specdyn {purpose} (pid {os.getpid()})")
    f.flush()
    return f


def release_lock(f) -> None:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


@contextlib.contextmanager
def locked(path: Path, purpose: str = "analyze"):
    """Hold the store's exclusive lock for the duration of the block."""
    f = acquire_lock(path, purpose)
    try:
        yield
    finally:
        release_lock(f)
