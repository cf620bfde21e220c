"""The suite leaves no process behind: a session whose test leaves a child running, or orphans a grandchild, fails
naming both (command and test), and both are killed (tests/conftest.py, tests/leftovers.py)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests import leftovers

LEAK = """
import subprocess, sys

def test_clean():
    pass

def test_leaks():  # last: /proc start times count 1/100 s, a next test could start in the same tick
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    subprocess.Popen([*sleeper, "{mark}-child"])
    # a grandchild orphaned at once: its parent (sh) exits, pytest adopts it
    subprocess.run(["sh", "-c", " ".join(repr(a) for a in sleeper) + " {mark}-orphan >/dev/null 2>&1 &"], check=True)
"""


def _marked(mark: str) -> list[int]:
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
            state = leftovers._stat(int(name))[1]
        except (OSError, ValueError, IndexError):
            continue
        if mark.encode() in cmd and state not in "ZX":
            out.append(int(name))
    return out


def test_a_leaked_child_and_an_orphan_fail_the_session_and_are_killed(tmp_path):
    mark = f"leak-{uuid.uuid4().hex[:12]}"
    (tmp_path / "test_leak.py").write_text(LEAK.format(mark=mark))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", "test_leak.py"]
    try:
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        out = p.stdout + p.stderr
        assert p.returncode != 0, out
        assert "2 passed, 1 error" in out and "the tests left processes running" in out, out
        named = [line for line in out.splitlines() if "started during test_leak.py::test_leaks): " in line]
        for kind in ("child", "orphan"):
            assert any(f"{mark}-{kind}" in line for line in named), out
        assert _marked(mark) == []  # killed, not just named
    finally:
        for pid in _marked(mark):  # the check itself failed: leave nothing behind either
            os.kill(pid, 9)
