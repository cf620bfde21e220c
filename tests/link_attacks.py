"""Attack fixtures: files planted where specdyn reads or writes, as an attacker with write access to a run dir, a
hub cache or an output folder would plant them. Each returns the victim file whose contents must survive."""

from __future__ import annotations

import os
from pathlib import Path

VICTIM_TEXT = "export SECRET=1  # the victim's own file\n"


def victim(tmp_path: Path, name: str = "bashrc") -> Path:
    """A file outside everything specdyn was pointed at (stands for ~/.bashrc)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    v = home / name
    v.write_text(VICTIM_TEXT)
    return v


def plant_link(at: Path, target: Path) -> Path:
    """A symbolic link at `at` (a path specdyn writes by default) leading to `target`."""
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, at)
    return target


def plant_hard_link(at: Path, target: Path) -> Path:
    """A second name for `target` at `at` (a link O_NOFOLLOW does not see)."""
    at.parent.mkdir(parents=True, exist_ok=True)
    os.link(target, at)
    return target


def untouched(v: Path) -> bool:
    return v.read_text() == VICTIM_TEXT
