"""A store opened once: its path, root group, schema version, attributes, arrays and rows, read from its metadata
one time and handed on (to the plan, the write session, the reader) instead of each step reopening the path.

`Store(path)` never writes and never creates anything; `migrate` (store.migrate) brings one opened for writing to
this version's layout.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.pairs import PairSpec
from specdyn.store import layout
from specdyn.version import __version__


class Store:
    """One store path, opened once. `root` is None where no specdyn store is there (nothing, a folder of leftovers,
    something else); `mode` "r" for readers, "a" for a writer (which holds the lock)."""

    def __init__(self, path: Path, mode: str = "r"):
        import zarr

        self.path = Path(path)
        self.mode = mode
        self.meta = _read_meta(self.path / "zarr.json")
        self.root = None
        if self.is_specdyn:
            # readers use consolidated metadata when present (one file read); a writer never does (it goes stale)
            consolidated = None if mode == "r" else False
            self.root = zarr.open_group(str(self.path), mode=mode, use_consolidated=consolidated)

    # -- what is there
    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def is_specdyn(self) -> bool:
        return isinstance(self.meta, dict) and "specdyn" in (self.meta.get("attributes") or {})

    @property
    def attrs(self) -> dict:
        """The root's `specdyn` attributes (as read when opened, or as last written through `update_attrs`)."""
        if self.root is not None:
            return layout.read_attrs(self.root)
        return {}

    @property
    def schema(self) -> int | None:
        v = ((self.meta or {}).get("attributes") or {}).get("specdyn", {})
        v = v.get("schema_version") if isinstance(v, dict) else None
        return v if isinstance(v, int) else None

    def newer(self) -> str | None:
        """A one-line explanation when a newer specdyn wrote the store, else None."""
        v = self.schema
        if v is not None and v > layout.SCHEMA_VERSION:
            return (
                f"{self.path}: written by a newer specdyn (store schema {v}; specdyn {__version__} knows schema "
                f"{layout.SCHEMA_VERSION}); upgrade specdyn (pip install -U specdyn)"
            )
        return None

    @cached_property
    def arrays(self) -> set[str]:
        """The root's array names (cached: `refresh` after adding arrays)."""
        return layout.array_names(self.root) if self.root is not None else set()

    def refresh(self) -> None:
        self.__dict__.pop("arrays", None)

    def missing(self) -> list[str]:
        """The arrays every store must have that this one lacks (a creation killed part-way, in old versions)."""
        return layout.missing_arrays(self.root, self.arrays) if self.root is not None else ["zarr.json"]

    # -- rows, matrices, pairs
    def done(self) -> np.ndarray:
        return self.root["done"][:] if self.root is not None else np.zeros(0, bool)

    def has_done_rows(self) -> bool:
        try:
            return bool(np.any(self.done()))
        except (KeyError, OSError, ValueError):
            return False

    def rows(self) -> list[dict]:
        """Every physical row: {"row", "done", "step", "checkpoint", "source", "file_bytes", "file_mtime_ns"}
        (the file fields -1 where unknown)."""
        if self.root is None:
            return []
        root = self.root
        done = root["done"][:]
        steps, names, sources = root["step"][:], root["checkpoint"][:], root["source"][:]
        have = self.arrays
        sizes = root["file_bytes"][:] if "file_bytes" in have else np.full(len(done), -1)
        mtimes = root["file_mtime_ns"][:] if "file_mtime_ns" in have else np.full(len(done), -1)
        return [
            {"row": i, "done": bool(d), "step": int(s), "checkpoint": str(n), "source": int(src),
             "file_bytes": int(b), "file_mtime_ns": int(t)}
            for i, (d, s, n, src, b, t) in enumerate(zip(done, steps, names, sources, sizes, mtimes))
        ]  # fmt: skip

    def specs(self) -> list[MatrixSpec]:
        return layout.specs_of(self.root)

    def pairs(self) -> list[PairSpec]:
        return layout.pairs_of(self.root)

    # -- leftovers
    def own_files_only(self) -> bool:
        """Whether the folder holds nothing but what specdyn itself leaves (an old in-store lock, zarr's partial
        writes, an empty group): what a failed first run of an older version left behind."""
        if not self.path.is_dir():
            return False
        names = (layout.LOCK_NAME, "zarr.json")
        files_ok = all(p.name in names or p.name.endswith(".partial") for p in self.path.iterdir())
        meta = self.path / "zarr.json"
        empty = not meta.exists() or (
            isinstance(self.meta, dict) and self.meta.get("node_type") == "group" and not self.meta.get("attributes")
        )
        return files_ok and empty


def _read_meta(meta: Path) -> dict | None:
    """The root zarr.json, or None where it is absent or unreadable."""
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
