"""Writing files safely: every output is a new temporary file beside its target, renamed over it, never written
through a symbolic link; and file names that are not UTF-8 kept as text.

The rule for a link at the target: a path specdyn chose (a default output name, a file inside a run dir or a
store) that is a symbolic link is refused, since whoever planted it chose where the write would go. A path the
user named (`-o PATH`) may be a link: the user pointed there, so the file the link leads to is replaced (again
through a temporary file beside it). The temporary name holds the process id and random bytes, and is created
with O_EXCL|O_NOFOLLOW, so two processes never share one and a planted file or link is never written.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from specdyn.errors import SpecdynError

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def output_path(path, named: bool = False, folder: bool = False, create: bool = True) -> Path:
    """The file to replace for an output `path`: refuses a link specdyn was not given, a folder where a file goes
    (and a file where a folder goes), and a parent that is not a folder; creates missing parent folders (unless
    `create` is False: a check before a long computation leaves nothing behind). A device or pipe the user named
    (`-o /dev/stdout`) is returned as it is: the writers write into it instead of replacing it."""
    path = Path(path)
    if _special(path):
        if not named:
            raise SpecdynError(
                f"{path} is not a plain file (a device or a pipe); specdyn writes its outputs as files: remove it or "
                "choose another name"
            )
        return path
    if path.is_symlink():
        if not named:
            raise SpecdynError(
                f"{path} is a symbolic link (to {os.readlink(path)}); specdyn does not write through a link it was not "
                "given: remove the link, or name the path explicitly (-o/--out) to write where it leads"
            )
        path = Path(os.path.realpath(path))
    if not folder and path.is_dir():
        raise SpecdynError(f"{path} is a folder; name a file to write, e.g. {path / 'out'}{path.suffix or ''}")
    if folder and path.exists() and not path.is_dir():
        raise SpecdynError(f"{path} is a file where a folder goes; remove it or choose another name")
    above = next((p for p in path.parents if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():
        raise SpecdynError(f"{path}: {above} is a file, not a folder; choose another path")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SpecdynError(f"{path}: a part of {path.parent} is a file, not a folder; choose another path") from None
    except OSError as e:
        raise SpecdynError(f"{path}: cannot create its folder {path.parent} ({os.strerror(e.errno)})") from None
    return path


def _special(path: Path) -> bool:
    """Whether `path` leads (after links) to neither a file nor a folder: a device, a pipe, a socket."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _temp_name(target: Path) -> Path:
    # Hidden and ending in .tmp, so checkpoint discovery never takes it for a checkpoint.
    return target.with_name(f".{target.name[:120]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # durability of the rename only; some filesystems refuse a folder fsync
        _fsync(folder)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(path, named: bool = False, folder: bool = False):
    """Yield a new, empty temporary file (or folder) beside `path` for a writer that takes a path; when the block
    ends it is flushed to disk and renamed over `path` (see the module's rule for links); on an error it is
    removed and `path` is untouched. A folder target that exists is replaced whole."""
    target = output_path(path, named, folder)
    if _special(target):  # a device or pipe the user named: written in place
        yield target
        return
    tmp = _temp_name(target)
    if folder:
        os.mkdir(tmp)
    else:
        os.close(os.open(tmp, _NEW, 0o666))
    try:
        yield tmp
        if not folder:
            _fsync(tmp)
        _commit(tmp, target, folder)
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, target: Path, folder: bool) -> None:
    if folder and (target.is_dir() and not target.is_symlink()):
        old = _temp_name(target)
        os.rename(target, old)  # a folder cannot be renamed over a non-empty one: set the old one aside first
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", named: bool = False, **kwargs):
    """An open file (mode "w" or "wb", `open`'s keyword arguments) whose contents replace `path` atomically when
    the block ends, as `atomic_path` does."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not 'w' or 'wb'")
    target = output_path(path, named)
    if _special(target):  # a device or pipe the user named (`-o /dev/stdout`): written in place, not replaced
        with open(target, mode, **kwargs) as f:
            yield f
        return
    tmp = _temp_name(target)
    fd = os.open(tmp, _NEW, 0o666)
    try:
        with open(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path, data: str | bytes, named: bool = False, encoding: str = "utf-8") -> Path:
    """Replace `path` with `data` (text is encoded as `encoding`) atomically; returns the path written."""
    target = output_path(path, named)
    with atomic_open(target, "wb", named=named) as f:
        f.write(data.encode(encoding, "backslashreplace") if isinstance(data, str) else data)  # never half-fail
    return target


def open_private(path, mode: int = 0o644) -> int:
    """A read-write descriptor of a plain file specdyn keeps beside its data (a lock): created with O_EXCL, or the
    existing one opened with O_NOFOLLOW; a link, or anything but a plain file with one name, is refused."""
    path = Path(path)
    try:
        for attempt in range(10):  # the file may be removed between the two opens (a lock's holder lets go)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
                break
            except FileExistsError:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                    break
                except FileNotFoundError:
                    if attempt == 9:
                        raise
    except OSError:
        if path.is_symlink():
            raise SpecdynError(
                f"{path} is a symbolic link (to {os.readlink(path)}); specdyn never writes through one: remove it"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "a plain file with other names (hard links)" if stat.S_ISREG(st.st_mode) else "not a plain file"
        raise SpecdynError(f"{path} is {what}; specdyn writes only its own files there: remove it")
    return fd


# --- file names that are not UTF-8 -------------------------------------------------------------------------------


def name_text(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (which Python holds as surrogates) become `\\xHH`, so the
    name can be stored, printed and written to JSON; valid names are unchanged. `name_path` finds the file again."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_path(folder: Path, text: str) -> Path:
    """The path under `folder` that `name_text` gave `text`: the name itself, else the one its `\\xHH` escapes
    spell (a name holding a literal `\\x` is taken as it is when such a file exists)."""
    plain = Path(folder) / text
    if "\\x" not in text or plain.exists():
        return plain
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode("utf-8"))
    return Path(folder) / os.fsdecode(raw)
