"""Replace a folder (a whole store, or one result group inside it) without ever losing the old version.

The new version is built beside the live one (`<base>.<tag>new-tmp`), marked complete, then swapped in; the old
one (`<base>.<tag>old-tmp`) is deleted only once the new one is in place. `recover` finishes or undoes a swap
that was killed at any point, so a rerun always finds one whole version. Sides live beside the store, never
inside it, so zarr and xarray never see them as groups. Creating a store is the same swap with no old version.
Callers hold the store's lock around `begin`/`commit`/`recover`, so two processes never touch the same sides.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from specdyn.errors import SpecdynError
from specdyn.files import open_private
from specdyn.store import faults


def real_store(path: Path, named: bool) -> Path:
    """The store a writer works on: a store path that is a symbolic link is followed only where the user named
    it (`--out LINK`); a link at a path specdyn chose (`RUN_DIR/specdyn.zarr`) is refused, naming its target."""
    path = Path(path)
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if named:
        return target
    raise SpecdynError(
        f"{path} is a symbolic link (to {os.readlink(path)}); specdyn does not write through a link it did not "
        f"get: pass the store itself ({target}) to write there"
    )


class Swap:
    """The side folders of one live folder: `live` is replaced, sides are named after `beside` and `tag`.

    `verify(path)` (optional) checks that a new version is whole before it is swapped in, and before `recover`
    finishes a killed swap with it."""

    def __init__(
        self, live: Path, beside: Path | None = None, tag: str = "", verify: Callable[[Path], bool] | None = None
    ):
        self.live = Path(live)
        beside = Path(beside) if beside is not None else self.live
        prefix = f"{beside.name}.{tag.replace('/', '-')}." if tag else f"{beside.name}."
        self.new = beside.with_name(prefix + "new-tmp")
        self.old = beside.with_name(prefix + "old-tmp")
        self.complete = beside.with_name(prefix + "new-tmp.complete")
        self.verify = verify or (lambda path: True)

    def pending(self) -> bool:
        """Whether a killed swap left anything to finish or undo."""
        return self.new.exists() or self.old.exists() or self.complete.exists()

    def recover(self) -> None:
        """Finish a swap whose new version was complete (and verifies), else undo it. A side that is a symbolic
        link is not specdyn's (it never makes one): the link itself is removed, never followed nor swapped in."""
        for side in (self.new, self.old, self.complete):
            if side.is_symlink():
                side.unlink()
        if self.new.exists() and self.complete.exists() and not self.live.exists() and self.verify(self.new):
            os.rename(self.new, self.live)
        if self.new.exists():
            shutil.rmtree(self.new)
        self.complete.unlink(missing_ok=True)
        if self.old.exists():
            if self.live.exists() or self.live.is_symlink():
                shutil.rmtree(self.old)
            else:
                os.rename(self.old, self.live)

    def begin(self) -> Path:
        """A fresh, empty place to build the new version."""
        self.recover()
        return self.new

    def commit(self) -> None:
        """Swap the (complete, verified) new version in; the old one goes only once the new one is live."""
        if not self.verify(self.new):
            raise RuntimeError(f"{self.new}: the new version is incomplete; refusing to swap it in")
        os.close(open_private(self.complete))  # never through a link planted there
        faults.point("swap:complete")
        self.live.parent.mkdir(parents=True, exist_ok=True)
        if self.live.exists():
            os.rename(self.live, self.old)
            faults.point("swap:old-aside")
        os.rename(self.new, self.live)
        faults.point("swap:new-live")
        self.complete.unlink()
        if self.old.exists():
            shutil.rmtree(self.old)
