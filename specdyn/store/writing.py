"""Writing a store safely: write sessions, rows, derived arrays, attributes, and reordering rows by a rebuild.

Writing rules that make the store safe to kill and to share:
- a write session holds the store's exclusive lock and removes the consolidated metadata first, re-consolidating
  only when it ends cleanly, so a killed run never leaves stale metadata behind;
- a row's `done` flag is written last, after every array of the row;
- nothing ever opens the store with mode "w"; `--overwrite` deletes it explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import zarr

from specdyn.errors import SpecdynError
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.pairs import PairSpec
from specdyn.store.layout import (
    HEAVY_METRICS,
    LOCK_NAME,
    ROW_METRICS,
    add_heavy_arrays,
    checkpoint_arrays,
    create_layout,
    is_store,
    matrix_group,
    matrix_names,
    read_attrs,
    specs_of,
)
from specdyn.store.locking import acquire_lock, locked
from specdyn.store.swap import Swap


def open_root(path: Path, mode: str = "r"):
    return zarr.open_group(str(path), mode=mode, use_consolidated=False)


def drop_consolidated(path: Path) -> None:
    """Remove consolidated metadata from the root zarr.json (atomically), before any write."""
    meta = Path(path) / "zarr.json"
    if not meta.exists():
        return
    doc = json.loads(meta.read_text())
    if doc.pop("consolidated_metadata", None) is None:
        return
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, meta)


def consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Consolidated metadata is currently not part of the v3 spec"
        zarr.consolidate_metadata(str(path))


@contextlib.contextmanager
def write_session(path: Path, purpose: str = "analyze", lock: bool = True):
    """Lock the store (unless the caller holds the lock), drop stale consolidated metadata, yield the root group;
    consolidate on a clean exit."""
    with locked(path, purpose) if lock else contextlib.nullcontext():
        drop_consolidated(path)
        root = open_root(path, "a")
        yield root
        consolidate(path)


def remove_store(path: Path) -> None:
    """Delete a store (for --overwrite); refuses on anything that is not a specdyn store."""
    path = Path(path)
    if not path.exists():
        return
    if not is_store(path):
        raise SpecdynError(f"{path}: exists and is not a specdyn store; refusing to delete it, choose another --out")
    with locked(path, "overwrite"):
        for child in path.iterdir():
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def stored_rows(root) -> list[dict]:
    """Every physical row: {"row", "done", "step", "checkpoint", "source"}."""
    done = root["done"][:]
    steps, names, sources = root["step"][:], root["checkpoint"][:], root["source"][:]
    return [
        {"row": i, "done": bool(d), "step": int(s), "checkpoint": str(n), "source": int(src)}
        for i, (d, s, n, src) in enumerate(zip(done, steps, names, sources))
    ]


def resize_rows(root, n: int) -> None:
    """Give every checkpoint-axis array n rows; `done` first, so a kill part-way leaves only rows marked undone."""
    for arr in checkpoint_arrays(root):
        if arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))


def write_identity(root, i: int, step: int, relpath: str, source: int) -> None:
    """Name row i before it is computed, so `specdyn info` during a long analyze shows what is coming."""
    root["step"][i], root["checkpoint"][i], root["source"][i] = step, relpath, source


def write_row(root, i: int, step: int, relpath: str, source: int, row, specs: list[MatrixSpec]) -> None:
    """Write one checkpoint's results (a `spectral.rows.RowResult`) into row i, then mark it done."""
    root["done"][i] = False
    write_identity(root, i, step, relpath, source)
    for name in ROW_METRICS:
        root[name][i] = row.metrics[name]
    top = root["alignment"].shape[-1]
    root["alignment"][i] = row.alignment[:, :top]
    root["alignment_score"][i] = row.alignment_score
    for spec, sp in zip(specs, row.spectra):
        g = root[matrix_group(spec.name)]
        g["sv"][i] = sp.s
        g["U"][i] = sp.U
        g["V"][i] = sp.V
    root["done"][i] = True


def done_keys(root) -> set[tuple[int, str]]:
    """(source, checkpoint) of every completed row."""
    return {(int(s), str(c)) for s, c, d in zip(root["source"][:], root["checkpoint"][:], root["done"][:]) if d}


def derive(root) -> None:
    """Recompute the arrays that compare checkpoints (stability against the final and the previous one) from the
    stored singular vectors, and record which rows they are for."""
    from specdyn.spectral.rows import derive_stability

    done = np.flatnonzero(root["done"][:])
    names = matrix_names(root)

    def vectors(j: int, rows: np.ndarray):
        g = root[matrix_group(names[j])]
        sel = (rows, slice(None), slice(None))
        return g["U"].get_orthogonal_selection(sel), g["V"].get_orthogonal_selection(sel)

    arrays = derive_stability(done, root["done"].shape[0], len(names), root["stability"].shape[-1], vectors)
    for name, values in arrays.items():
        root[name][:] = values
    fill_heavy_tail(root)
    update_attrs(root, derived=derived_marker(root))


def fill_heavy_tail(root, recompute: bool = False) -> int:
    """Compute the heavy-tail metrics (docs/method.md §10) of every completed row that lacks them (all rows with
    `recompute`) from its stored singular values, adding the arrays to an older store first. Returns the number
    of (row, matrix) cells computed. Rows are marked by `matrix_rank`, which is finite for any finite spectrum."""
    from specdyn.spectral.heavy_tail import heavy_tail_metrics

    add_heavy_arrays(root)
    done = root["done"][:]
    values = {name: root[name][:] for name in HEAVY_METRICS}
    count = 0
    for j, spec in enumerate(specs_of(root)):
        todo = np.flatnonzero(done & (recompute | np.isnan(values["matrix_rank"][:, j])))
        if not len(todo):
            continue
        sv = root[matrix_group(spec.name)]["sv"].get_orthogonal_selection((todo, slice(None)))
        for i, s in zip(todo, sv):
            for name, v in heavy_tail_metrics(s, max(spec.shape)).items():
                values[name][i, j] = v
            count += 1
    if count:
        for name in HEAVY_METRICS:
            root[name][:] = values[name]
    return count


def derived_marker(root) -> dict:
    """Identifies the rows the derived arrays were computed for; a rerun with nothing new skips `derive`."""
    done = np.flatnonzero(root["done"][:])
    final = int(done[-1]) if len(done) else -1
    return {
        "rows": len(done),
        "final": str(root["checkpoint"][final]) if final >= 0 else None,
        "heavy_tail": 1,  # stores derived before the heavy-tail arrays existed differ here, so a rerun adds them
    }


def source_docs(previous: list[dict], run_dirs: list[str], rows: list[dict]) -> list[dict]:
    """The `sources` attribute: `{"run_dir"}` per source, plus `repo` and `revisions` ({checkpoint: revision})
    for a hub cache series (docs/store.md); earlier entries keep what they recorded."""
    old = {d.get("run_dir"): d for d in previous if isinstance(d, dict)}
    docs = [{**old.get(s, {}), "run_dir": s} for s in run_dirs]
    for r in rows:
        c = r.get("ckpt")
        if c is None or getattr(c, "revision", None) is None:
            continue
        doc = docs[r["source"]]
        if c.repo:
            doc["repo"] = c.repo
        doc["revisions"] = {**doc.get("revisions", {}), r["checkpoint"]: c.revision}
    return docs


def update_attrs(root, **changes) -> None:
    attrs = read_attrs(root)
    attrs.update(changes)
    root.attrs["specdyn"] = attrs


# --------------------------------------------------------------------------------------------- reordering rows


def recoverable(store: Path) -> bool:
    """Whether a killed rebuild left the old store beside this one (then `recover` puts it back)."""
    return Swap(store).old.exists()


def recover(store: Path) -> None:
    """Finish or undo a rebuild that was killed: the old store is kept until the new one is in place."""
    Swap(store).recover()


def rebuild(store: Path, root, rows: list[dict], specs: list[MatrixSpec], pairs: list[PairSpec], top: int):
    """Write a new store beside the old one with the done rows (dicts with "done" and the old "row") at their new
    positions, then swap it in. Returns the new root and the new store's lock (taken before the swap)."""
    swap = Swap(store)
    tmp = swap.begin()
    new = zarr.open_group(str(tmp), mode="w-")
    create_layout(new, specs, pairs, top, {})
    new.attrs["specdyn"] = read_attrs(root)
    resize_rows(new, len(rows))
    old_arrays, new_arrays = checkpoint_arrays(root), checkpoint_arrays(new)
    for j, r in enumerate(rows):
        if r["done"]:
            for a, b in zip(old_arrays[1:], new_arrays[1:]):  # `done` (index 0) is written last
                b[j] = a[r["row"]]
            new_arrays[0][j] = True
    for child in store.iterdir():  # groups other commands added (evals/...) travel unchanged
        if child.is_dir() and not (tmp / child.name).exists():
            shutil.copytree(child, tmp / child.name)
    lock = acquire_lock(tmp)
    swap.commit()
    return open_root(store, "a"), lock
