"""Replace a folder (a whole store, or one result group inside it) without ever losing the old version.

The new version is built beside the live one (`<base>.<tag>new-tmp`), marked complete, then swapped in; the old
one (`<base>.<tag>old-tmp`) is deleted only once the new one is in place. `recover` finishes or undoes a swap
that was killed at any point, so a rerun always finds one whole version. Sides live beside the store, never
inside it, so zarr and xarray never see them as groups.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class Swap:
    """The side folders of one live folder: `live` is replaced, sides are named after `beside` and `tag`."""

    def __init__(self, live: Path, beside: Path | None = None, tag: str = ""):
        self.live = Path(live)
        beside = Path(beside) if beside is not None else self.live
        prefix = f"{beside.name}.{tag.replace('/', '-')}." if tag else f"{beside.name}."
        self.new = beside.with_name(prefix + "new-tmp")
        self.old = beside.with_name(prefix + "old-tmp")
        self.complete = beside.with_name(prefix + "new-tmp.complete")

    def pending(self) -> bool:
        """Whether a killed swap left anything to finish or undo."""
        return self.new.exists() or self.old.exists() or self.complete.exists()

    def recover(self) -> None:
        """Finish a swap whose new version was complete, else undo it."""
        if self.new.exists() and self.complete.exists() and not self.live.exists():
            os.rename(self.new, self.live)
        if self.new.exists():
            shutil.rmtree(self.new)
        self.complete.unlink(missing_ok=True)
        if self.old.exists():
            if self.live.exists():
                shutil.rmtree(self.old)
            else:
                os.rename(self.old, self.live)

    def begin(self) -> Path:
        """A fresh, empty place to build the new version."""
        self.recover()
        return self.new

    def commit(self) -> None:
        """Swap the (complete) new version in; the old one goes only once the new one is live."""
        self.complete.touch()
        self.live.parent.mkdir(parents=True, exist_ok=True)
        if self.live.exists():
            os.rename(self.live, self.old)
        os.rename(self.new, self.live)
        self.complete.unlink()
        if self.old.exists():
            shutil.rmtree(self.old)
