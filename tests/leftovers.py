"""Processes a test session leaves behind (Linux /proc, no psutil): pytest adopts its descendants' orphans (a
child subreaper), and at the session's end every descendant still running is named, killed and reported by
tests/conftest.py, with the test that was running when it started."""

import bisect
import ctypes
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36
# Started by the interpreter itself and stopped at its exit (after the session): not the tests' doing.
INFRASTRUCTURE = ("multiprocessing.resource_tracker",)
TICKS = os.sysconf("SC_CLK_TCK")


def adopt_orphans() -> bool:
    """Become the reaper of this process's descendants' orphans, so that a grandchild whose parent died (a killed
    analyze's worker) stays a descendant here instead of moving to init. False where Linux's prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[int, str, int]:
    """(parent pid, state letter, start time in clock ticks since boot) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) ", comm may hold spaces and parentheses
    return int(fields[1]), fields[0].decode(), int(fields[19])


def descendants(root: int | None = None) -> dict[int, tuple[int, str, int]]:
    """Every process below `root` (default: this one): {pid: (ppid, state, start ticks)}."""
    root = os.getpid() if root is None else root
    procs = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc/self") else []:  # no /proc: nothing to check
        if name.isdigit():
            try:
                procs[int(name)] = _stat(int(name))
            except (OSError, ValueError, IndexError):  # gone meanwhile
                continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out[pid] = procs[pid]
            todo.append(pid)
    return out


def command(pid: int) -> str:
    """The process's command line (at most 200 characters), or its name in brackets."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        if argv:
            return argv[:200]
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f"[{f.read().strip().decode(errors='replace')}]"
    except OSError:
        return "?"


def now_ticks() -> int:
    """The clock /proc's start times count in: whole ticks since boot (truncated as the kernel does, so that a
    process started after this call never shows an earlier start)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * TICKS)


def reap() -> None:
    """Collect this process's exited children (zombies, adopted orphans among them)."""
    for pid, (ppid, state, _) in descendants().items():
        if ppid == os.getpid() and state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def running() -> dict[int, tuple[str, int]]:
    """Descendants still running (zombies and the interpreter's own helpers left out): {pid: (command, start)}."""
    out = {}
    for pid, (_, state, start) in descendants().items():
        cmd = command(pid)
        if state not in "ZX" and not any(name in cmd for name in INFRASTRUCTURE):
            out[pid] = (cmd, start)
    return out


def kill_leftovers(started: list[tuple[int, str]]) -> list[str]:
    """SIGKILL every running descendant (twice over, in case one forked meanwhile) and reap it; one line per
    process killed, naming the test (from `started`, sorted (start ticks, test id)) running when it started."""
    lines = []
    for _ in range(2):
        left = running()
        for pid, (cmd, start) in left.items():
            i = bisect.bisect_right(started, (start, "\uffff")) - 1
            during = f"started during {started[i][1]}" if i >= 0 else "started before the first test"
            lines.append(f"pid {pid} ({during}): {cmd}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline and any(p in running() for p in left):
            time.sleep(0.05)
        reap()
    return lines
