"""Writing a store safely: write sessions, rows, derived arrays, attributes, and reordering rows by a rebuild.

Writing rules that make the store safe to kill and to share:
- a write session holds the store's exclusive lock and removes the consolidated metadata first, re-consolidating
  only when it ends cleanly, so a killed run never leaves stale metadata behind;
- a row's `done` flag is written last, after every array of the row;
- nothing ever opens the store with mode "w"; `--overwrite` deletes it explicitly;
- a store is created whole beside its path and renamed in (`create_store`), so no process ever sees half a
  layout; swaps and their recovery happen only under the lock, and only a verified complete store is swapped in.
Every write boundary calls `faults.point(name)`, where tests kill the writer to check all of the above.
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
from specdyn.files import atomic_write
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.pairs import PairSpec
from specdyn.store import faults
from specdyn.store.handle import Store
from specdyn.store.layout import (
    BASE_ARRAYS,
    FILE_ARRAYS,
    HEAVY_METRICS,
    IDENTITY,
    ROW_METRICS,
    Slots,
    add_base_arrays,
    array_names,
    checkpoint_arrays,
    create_layout,
    matrix_names,
    read_attrs,
    specs_of,
)
from specdyn.store.locking import locked
from specdyn.store.migrate import mark_filled, migrate
from specdyn.store.swap import Swap, real_store


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
    atomic_write(meta, json.dumps(doc, indent=2))


def consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Consolidated metadata is currently not part of the v3 spec"
        zarr.consolidate_metadata(str(path))


@contextlib.contextmanager
def write_session(store: Path | Store, purpose: str = "analyze", lock: bool = True):
    """Lock the store (unless the caller holds the lock and passes the `Store` it opened under it), refuse a newer
    schema, drop stale consolidated metadata, migrate a specdyn store to this version's layout, and yield the root
    group; consolidate on a clean exit."""
    path = store.path if isinstance(store, Store) else Path(store)
    real_store(path, named=False)  # a linked store is refused here: writers follow only a link the user named
    with locked(path, purpose) if lock else contextlib.nullcontext():
        st = store if isinstance(store, Store) and not lock and store.mode != "r" else Store(path, "a")
        refuse_newer(st)
        drop_consolidated(path)
        if st.root is not None:
            migrate(st)
        root = st.root if st.root is not None else open_root(path, "a")
        yield root
        consolidate(path)
        faults.point("consolidated")


def refuse_newer(st: Store) -> None:
    """A store of a newer schema is never written (this version cannot know what it would break)."""
    why = st.newer()
    if why:
        raise SpecdynError(f"{why} to write it; this version only reads it")


def open_for_writing(path: Path, overwrite: bool = False, repair: bool = False) -> Store:
    """Under the lock, before any work: finish or undo a killed swap, drop zarr's partial files, delete the store
    (`overwrite`) or what a failed creation left, refuse what is not a specdyn store or is of a newer schema, mark
    the rows of damaged chunks undone (`repair`), and return the store opened once for writing (root None where
    there is none yet)."""
    path = Path(path)
    recover(path)
    st = Store(path, "a")
    if overwrite and st.exists:
        remove_store(st)
        st = Store(path, "a")
    elif st.exists and not st.is_specdyn and not st.own_files_only():
        raise SpecdynError(f"{path}: exists and is not a specdyn store; choose another --out")
    refuse_newer(st)
    if repair and st.is_specdyn:
        from specdyn.store.damage import repair as repair_store

        repair_store(path)  # damaged rows marked undone (lost arrays recreated): this run recomputes them
        st = Store(path, "a")
    return clear_leftovers(st)  # a creation killed part-way (older versions) holds no row: start afresh


def verify_store(path: Path) -> bool:
    """A whole store: specdyn's attributes and every schema-1 array (what a swap or a creation may put live)."""
    try:
        st = Store(path)
        return st.is_specdyn and not st.missing()
    except (KeyError, OSError, ValueError):
        return False


def clear_leftovers(st: Store) -> Store:
    """Under the lock: delete what a killed or failed earlier run left at the path that holds no row, so the store
    is created afresh: a folder of specdyn's own files only, or a layout whose creation was killed part-way (older
    versions created stores in place). A damaged store that holds rows is refused, never deleted."""
    if not st.path.is_dir():
        return st
    try:
        missing = st.missing() if st.is_specdyn else None
    except (KeyError, OSError, ValueError):
        missing = ["matrix"]
    if missing == []:
        return st
    if st.own_files_only():
        shutil.rmtree(st.path)
    elif st.is_specdyn:
        if st.has_done_rows():
            raise SpecdynError(
                f"{st.path}: damaged store (no {', '.join(missing[:3])}); rerun with --repair to recompute what it "
                "lost from the checkpoints, or --overwrite to start afresh"
            )
        shutil.rmtree(st.path)
    else:
        return st
    return Store(st.path, "a")


def remove_partials(path: Path) -> int:
    """Delete the `*.partial` files zarr writes before renaming a chunk into place: only a killed write leaves
    one, and it is never read. The caller holds the lock, so no write of its own is in flight."""
    n = 0
    for p in Path(path).rglob("*.partial"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def remove_store(st: Store) -> None:
    """Delete a store (for --overwrite; the caller holds its lock); refuses on anything that is not a specdyn
    store or a folder of specdyn's own leftovers."""
    path = st.path
    if not path.exists():
        return
    if not path.is_dir() or not (st.is_specdyn or st.own_files_only()):
        raise SpecdynError(f"{path}: exists and is not a specdyn store; refusing to delete it, choose another --out")
    shutil.rmtree(path)


def create_store(path: Path, specs: list[MatrixSpec], pairs: list[PairSpec], top: int, attrs: dict) -> Store:
    """Create an empty store: the whole layout is built beside `path`, verified, and renamed into place, so a
    kill at any moment leaves either no store or a complete one (the caller holds the lock and cleared leftovers
    with `open_for_writing`). Returns it opened for writing."""
    swap = Swap(path, verify=verify_store)
    tmp = swap.begin()
    try:
        create_layout(zarr.open_group(str(tmp), mode="w-"), specs, pairs, top, attrs)
    except BaseException:  # a failed creation (a full disk, an interrupt) leaves no half layout beside the store
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    faults.point("create:built")
    swap.commit()
    return Store(path, "a")


def resize_rows(root, n: int) -> None:
    """Give every checkpoint-axis array n rows; `done` first, so a kill part-way leaves only rows marked undone."""
    arrays = [arr for arr in checkpoint_arrays(root) if arr.shape[0] != n]
    for j, arr in enumerate(arrays):
        arr.resize((n, *arr.shape[1:]))
        if j == 0 or j == len(arrays) - 1:  # `done` alone resized, then all (states in between are alike)
            faults.point("resize")


def write_identity(root, i: int, step: int, relpath: str, source: int) -> None:
    """Name row i before it is computed, so `specdyn info` during a long analyze shows what is coming."""
    root["step"][i], root["checkpoint"][i], root["source"][i] = step, relpath, source
    faults.point("identity")


def write_matrix(root, i: int, name: str, spectrum) -> None:
    """One matrix's chunks of row i (sv, U, V) in a store of per-matrix groups. Chunks hold one checkpoint of
    one matrix, so workers writing different matrices (or rows) of a store at once never touch the same file;
    `done` is the coordinator's. (Packed stores are written by the coordinator only: `open_for_matrices`.)"""
    slots = Slots(root)
    for arr, value in zip(slots.arrays(name), (spectrum.s, spectrum.U, spectrum.V)):
        if arr.shape[-1]:
            arr[slots.select(name, i)] = value


def read_matrix(root, i: int, name: str, slots: Slots | None = None):
    """The spectrum of one matrix in row i, as written."""
    from specdyn.spectral.svd import Spectrum

    slots = slots or Slots(root)
    sel = slots.select(name, i)
    return Spectrum(*(arr[sel] for arr in slots.arrays(name)))


class RowWriter:
    """Writes whole rows into an open store whose rows are sized already (`resize_rows`). The array handles are
    looked up once (every lookup reads and parses metadata) and each phase of a row is one concurrent zarr call
    instead of one call per array: on GPT-2 small, ~400 synchronous calls per row become 6.

    In a packed store (`layout.PACK_ABOVE`) a shard holds many matrices of a row: their spectra are held until
    the shard's last one arrives (matrices come in store order, so each shape has one shard open at most) and
    the shard is then written whole, by one call that reads nothing back."""

    def __init__(self, root, specs: list[MatrixSpec]):
        names = ("done", *IDENTITY, *ROW_METRICS, "alignment", "alignment_score", *FILE_ARRAYS)
        self.root, self.specs = root, specs
        self.arrays = {name: root[name] for name in names}
        self.slots = Slots(root)
        self.matrices = {s.name: self.slots.arrays(s.name) for s in specs}
        have = array_names(root)
        self.base = {name: root[name] for name in BASE_ARRAYS if name in have}  # stores with a base model
        self.held: dict[tuple, dict[int, object]] = {}  # (row, group, shard) -> {member: spectrum}, packed only

    def _set(self, i: int, values: list[tuple[object, object]]) -> None:
        """arrays[i] = value for every (array, value), concurrently (each a chunk of its own)."""
        gather([arr.async_array.setitem(i, value) for arr, value in values])

    def matrix(self, i: int, name: str, spectrum) -> None:
        """One matrix's chunks of row i ahead of the row (packed: once its shard is complete)."""
        if self.slots.packed:
            self._hold(i, [(name, spectrum)])
        else:
            self._set(i, self.matrix_values(name, spectrum))
        faults.point("row:matrix")

    def spectrum(self, i: int, name: str):
        """A spectrum given to `matrix` for row i, from the store or, packed, from a shard not yet written."""
        if self.slots.packed:
            for (row, g, _), held in self.held.items():
                if row == i and g == self.slots.group(name) and self.slots.member(name) in held:
                    return held[self.slots.member(name)]
        return read_matrix(self.root, i, name, self.slots)

    def matrix_values(self, name: str, spectrum) -> list[tuple[object, object]]:
        sv, U, V = self.matrices[name]
        if U.shape[-1] == 0:  # a values-only store: nothing to write for the vectors
            return [(sv, spectrum.s)]
        return [(sv, spectrum.s), (U, spectrum.U), (V, spectrum.V)]

    def _hold(self, i: int, spectra: list, finish: bool = False) -> None:
        """Packed: hold spectra by shard; write every shard that is complete (all, with `finish`)."""
        slots, ready = self.slots, []
        for name, sp in spectra:
            sv = self.matrices[name][0]
            per, j = sv.shards[1], slots.member(name)
            key = (i, slots.group(name), j // per)
            self.held.setdefault(key, {})[j] = sp
            if len(self.held[key]) == min(per, sv.shape[1] - key[2] * per):
                ready.append(key)
        if finish:
            ready = [k for k in self.held if k[0] == i]
        groups = self.__dict__.setdefault("_groups", {slots.group(s.name): self.matrices[s.name] for s in self.specs})
        gather([self._write_shard(key, self.held.pop(key), groups[key[1]]) for key in dict.fromkeys(ready)])

    async def _write_shard(self, key: tuple, held: dict[int, object], arrays: tuple) -> None:
        """The held members of one shard of row i, in runs of consecutive members (one run: the whole shard)."""
        i = key[0]
        members = sorted(held)
        runs, start = [], 0
        for k in range(1, len(members) + 1):
            if k == len(members) or members[k] != members[k - 1] + 1:
                runs.append(members[start:k])
                start = k
        for run in runs:  # one after another: runs of one shard share its file
            for arr, part in zip(arrays, ("s", "U", "V")):
                if arr.shape[-1]:
                    value = np.stack([getattr(held[j], part) for j in run])
                    await arr.async_array.setitem((i, slice(run[0], run[-1] + 1)), value)

    def write(self, i: int, step: int, relpath: str, source: int, row, fingerprint=(-1, -1)) -> None:
        """One checkpoint's results (a `spectral.rows.RowResult`) into row i, then its `done` flag.
        `fingerprint`: (bytes, mtime_ns) of the checkpoint as read, so a rerun notices when it changes. Spectra
        that are None were written already (by workers, `write_matrix`, or held by `matrix`)."""
        a = self.arrays
        if a["done"][i]:
            a["done"][i] = False
            faults.point("row:undone")
        self._set(i, [(a["step"], step), (a["checkpoint"], relpath), (a["source"], source)])
        faults.point("identity")
        self._set(i, [(a[name], row.metrics[name]) for name in ROW_METRICS])
        if self.base and row.base is not None:
            self._set(i, [(arr, row.base[name]) for name, arr in self.base.items()])
        faults.point("row:metrics")
        top = a["alignment"].shape[-1]
        self._set(i, [(a["alignment"], row.alignment[:, :top]), (a["alignment_score"], row.alignment_score)])
        faults.point("row:alignment")
        given = [(spec.name, sp) for spec, sp in zip(self.specs, row.spectra) if sp is not None]
        if self.slots.packed:
            self._hold(i, given, finish=True)
        else:
            self._set(i, [v for name, sp in given for v in self.matrix_values(name, sp)])
        faults.point("row:matrix")
        self._set(i, [(a["file_bytes"], fingerprint[0]), (a["file_mtime_ns"], fingerprint[1])])
        a["done"][i] = True
        faults.point("row:done")


def record_routes(root, routes: dict[str, str]) -> None:
    """Add the SVD routes rows are about to be computed or written with to the attrs (before their `done` flags,
    so the routes of every done row are on record even after a kill)."""
    known = read_attrs(root).get("svd_routes", {})
    if any(known.get(k) != v for k, v in routes.items()):
        update_attrs(root, svd_routes={**known, **routes})


# A file inside the store that only this analyze run knows the name of: a worker that sees it sees the same store
# (shared storage) and writes its matrices there itself; one that does not sends them back.
SHARED_MARKER = ".specdyn-workers-"


@contextlib.contextmanager
def shared_marker(store: Path):
    """Yield a token naming a marker file in the store for the duration of a parallel analyze."""
    import uuid

    for stale in Path(store).glob(SHARED_MARKER + "*"):  # left by a killed run
        stale.unlink(missing_ok=True)
    token = uuid.uuid4().hex
    marker = Path(store) / (SHARED_MARKER + token)
    atomic_write(marker, f"analyze (pid {os.getpid()}) workers may write matrices into this store\n")
    try:
        yield token
    finally:
        marker.unlink(missing_ok=True)


def open_for_matrices(store: str, token: str):
    """The store's root group for a worker's `write_matrix` calls, or None where this process cannot see the
    coordinator's store (no marker): then results travel back instead."""
    if not (Path(store) / (SHARED_MARKER + token)).is_file():
        return None
    root = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    return None if Slots(root).packed else root  # a packed shard holds other matrices: the coordinator writes it


def done_keys(root) -> set[tuple[int, str]]:
    """(source, checkpoint) of every completed row."""
    return {(int(s), str(c)) for s, c, d in zip(root["source"][:], root["checkpoint"][:], root["done"][:]) if d}


def gather(coroutines: list) -> list:
    """Run zarr coroutines concurrently in one call into zarr's event loop (instead of one call each)."""
    import asyncio

    from zarr.core.sync import sync

    async def all_of():
        return await asyncio.gather(*coroutines)

    return list(sync(all_of()))


def read_many(selections: list[tuple[object, object]]) -> list[np.ndarray]:
    """array[selection] for every (array, selection), concurrently; a tuple whose first item is an index array
    selects orthogonally."""

    def one(arr, sel):
        if isinstance(sel, tuple) and isinstance(sel[0], np.ndarray):
            sel = sel + (slice(None),) * (arr.ndim - len(sel))
            return arr.async_array.get_orthogonal_selection(sel)
        return arr.async_array.getitem(sel)

    return gather([one(arr, sel) for arr, sel in selections])


def derive(root) -> None:
    """Recompute the arrays that compare checkpoints (stability against the final and the previous one) from the
    stored singular vectors, and record which rows they are for."""
    from specdyn.spectral.rows import derive_stability

    done = np.flatnonzero(root["done"][:])
    names = matrix_names(root)
    slots = Slots(root)
    handles = [slots.arrays(n)[1:] for n in names]

    def vectors(j: int, rows: np.ndarray):
        contiguous = rows[-1] - rows[0] == len(rows) - 1  # the usual case: a slice reads faster
        sel = slots.select(names[j], slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows)
        return read_many([(a, sel) for a in handles[j]])

    def row_values(j: int) -> int:
        U, V = handles[j]
        return U.shape[1] * U.shape[2] + V.shape[1] * V.shape[2]

    top = root["stability"].shape[-1]
    if top == 0:  # a values-only store: no vectors to compare
        done = done[:0]
    arrays = derive_stability(done, root["done"].shape[0], len(names), top, vectors, row_values)
    for name, values in arrays.items():
        root[name][:] = values
        faults.point("derive")
    mark_filled(root, tuple(arrays))
    fill_from_sv(root)
    update_attrs(root, derived=derived_marker(root))


def fill_from_sv(root, recompute: bool = False) -> int:
    """Compute, from the stored singular values, the metrics that are functions of them: the heavy-tail metrics
    (docs/method.md §10) of every completed row that lacks them (all rows with `recompute`), and the spectrum
    metrics a migration added to a store that had rows (attrs `unfilled`). Returns the number of (row, matrix)
    cells whose heavy-tail metrics were computed. Heavy-tail rows are marked by `matrix_rank`, which is finite
    for any finite spectrum."""
    from specdyn.spectral.heavy_tail import heavy_tail_metrics
    from specdyn.spectral.metrics import spectrum_metrics

    unfilled = [n for n in read_attrs(root).get("unfilled", []) if n in ROW_METRICS]
    slots = Slots(root)
    done = root["done"][:]
    heavy = {name: root[name][:] for name in HEAVY_METRICS}
    spectral = {name: root[name][:] for name in unfilled}
    count = 0
    for j, spec in enumerate(specs_of(root)):
        want_heavy = done & (recompute | np.isnan(heavy["matrix_rank"][:, j]))
        todo = np.flatnonzero(want_heavy | (done & bool(unfilled)))
        if not len(todo):
            continue
        sv_arr = slots.arrays(spec.name)[0]
        sv = sv_arr.get_orthogonal_selection(slots.select(spec.name, todo) + (slice(None),))
        for i, s in zip(todo, sv):
            if want_heavy[i]:
                for name, v in heavy_tail_metrics(s, max(spec.shape)).items():
                    heavy[name][i, j] = v
                count += 1
            if unfilled:
                values = spectrum_metrics(s)
                for name in unfilled:
                    spectral[name][i, j] = values[name]
    if count:  # `matrix_rank` last: it marks the rows done, so a kill before it leaves them to the next run
        for name in sorted(HEAVY_METRICS, key=lambda n: n == "matrix_rank"):
            root[name][:] = heavy[name]
    for name in unfilled:
        root[name][:] = spectral[name]
    if count or unfilled:
        faults.point("derive")
    mark_filled(root, (*unfilled, *HEAVY_METRICS))
    return count


def forget_heavy_tail(root, rows: list[int]) -> None:
    """Rows about to be recomputed (a changed or repaired checkpoint) get their heavy-tail metrics anew from the
    new singular values: `fill_from_sv` computes the rows whose `matrix_rank` is NaN."""
    if rows and "matrix_rank" in array_names(root):
        root["matrix_rank"].set_orthogonal_selection((np.asarray(rows), slice(None)), np.nan)


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
    faults.point("attrs")


# --------------------------------------------------------------------------------------------- reordering rows


def recover(store: Path) -> None:
    """Under the lock: finish or undo a creation or rebuild that was killed (the old store is kept until the new
    one, verified complete, is in place), and drop zarr's partial files a killed write left."""
    Swap(store, verify=verify_store).recover()
    if Path(store).is_dir():
        remove_partials(store)


def rebuild(store: Path, root, rows: list[dict], specs: list[MatrixSpec], pairs: list[PairSpec], top: int):
    """Write a new store beside the old one with the done rows (dicts with "done" and the old "row") at their new
    positions, verify it, then swap it in (the caller holds the lock). Returns the new root."""
    swap = Swap(store, verify=verify_store)
    tmp = swap.begin()
    new = zarr.open_group(str(tmp), mode="w-")
    create_layout(new, specs, pairs, top, {})
    new.attrs["specdyn"] = read_attrs(root)
    if "epsilon" in array_names(root):
        add_base_arrays(new, root["epsilon"][:])
    resize_rows(new, len(rows))
    old_arrays = {a.path: a for a in checkpoint_arrays(root)}
    # by name: an older store may lack optional arrays (filled afterwards by derive); `done` is written last
    pairs_ = [(old_arrays[b.path], b) for b in checkpoint_arrays(new) if b.path in old_arrays and b.path != "done"]
    for j, r in enumerate(rows):
        if r["done"]:
            for a, b in pairs_:
                b[j] = a[r["row"]]
            new["done"][j] = True
            faults.point("rebuild:row")
    for child in store.iterdir():  # groups other commands added (evals/...) travel unchanged
        if child.is_dir() and not (tmp / child.name).exists():
            shutil.copytree(child, tmp / child.name)
    faults.point("rebuild:built")
    done = int(np.sum(open_root(tmp)["done"][:]))
    if done != sum(1 for r in rows if r["done"]):
        raise RuntimeError(f"{tmp}: rebuilt store holds {done} done rows, expected more; not swapping it in")
    swap.commit()
    return open_root(store, "a")
