"""The store's exclusive lock: a file beside the store (`.<store name>.lock` in its parent folder), locked with
flock (released by the OS if the process dies).

The lock lives beside the store, not inside it, so that it exists before the store does (creation is a rename
of a complete layout into place), survives the store being swapped for a rebuilt one, and leaves no folder
behind when a first run fails. Stores written before this kept `.specdyn.lock` inside; it is ignored.

The holder removes the file before it lets go, so no lock file is left in the run folder. A process that opened
the file just before it was removed gets the lock on a file no longer at that name: it checks the name still
leads to its file after locking, and otherwise starts over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from specdyn.errors import EXIT_STORE_BUSY, SpecdynError
from specdyn.files import open_private

READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def lock_path(store: Path) -> Path:
    store = Path(store)
    return store.with_name(f".{store.name}.lock")


def read_only_error(store: Path, e: OSError) -> SpecdynError:
    return SpecdynError(
        f"{store}: cannot write there ({os.strerror(e.errno)}); info, plot and report still read it: copy the "
        "store somewhere writable to add to it"
    )


def acquire_lock(path: Path, purpose: str = "analyze"):
    """Take the store's exclusive lock and return its open file, or refuse clearly if another process holds it
    or the store's folder cannot be written. The lock file is opened with O_NOFOLLOW (created with O_EXCL): a
    link or a hard link planted at its name is refused, never written through."""
    path = Path(path)
    lock = lock_path(path)
    for _ in range(100):  # a new attempt only when a holder removed the file between our open and our lock
        f = _try_lock(path, lock, purpose)
        if f is not None:
            return f
    raise SpecdynError(f"{lock}: the lock file keeps being replaced; stop the other specdyn processes and rerun")


def _same_file(f, lock: Path) -> bool:
    try:
        st, now = os.fstat(f.fileno()), os.lstat(lock)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _try_lock(path: Path, lock: Path, purpose: str):
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = os.fdopen(open_private(lock), "r+")
    except OSError as e:
        if e.errno in READ_ONLY:
            raise read_only_error(path, e) from None
        raise
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
    if not _same_file(f, lock):  # the holder we waited on removed it: lock the file now at that name
        f.close()
        return None
    f.lock_name = lock
    with contextlib.suppress(OSError):  # who holds it is only information; a full disk must not stop here
        f.seek(0)
        f.truncate()
        f.write(f"specdyn {purpose} (pid {os.getpid()})")
        f.flush()
    return f


def release_lock(f) -> None:
    """Remove the lock file (while still holding it, so no one else holds it yet) and let go."""
    with contextlib.suppress(OSError):  # a read-only folder keeps its lock file; nothing else is lost
        if _same_file(f, f.lock_name):
            os.unlink(f.lock_name)
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
