"""Damage a store can suffer after it was written (a garbage or truncated chunk, a deleted chunk or folder,
attributes edited by hand), named in one line with what to do; `analyze --repair` marks the rows it affects
undone so that they are recomputed from the checkpoints (docs/store.md, "Safety")."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError

REPAIR = "rerun `specdyn analyze --repair` on its run dir to recompute the affected rows from the checkpoints"
OVERWRITE = "rerun `specdyn analyze --overwrite` on its run dir to compute the store afresh"
# What zarr raises for a chunk it cannot decode: zstd's RuntimeError, a size mismatch's ValueError.
DECODE_ERRORS = (RuntimeError, ValueError)
# The arrays that name rows, matrices and pairs: without them there is nothing to recompute rows into.
NAMING = ("done", "step", "checkpoint", "source", "matrix", "pair")


def damaged(store, array: str, e: BaseException | None = None, hint: str = REPAIR) -> SpecdynError:
    why = f" ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})" if e is not None else ""
    return SpecdynError(f"{store}: damaged array {array}: a chunk cannot be read{why}; {hint}")


@contextlib.contextmanager
def reading(store, array: str, hint: str = REPAIR):
    """Reads of one array: a chunk zarr cannot decode is a one-line error naming the array, not a traceback."""
    try:
        yield
    except DECODE_ERRORS as e:
        raise damaged(store, array, e, hint) from None


# ----------------------------------------------------------------------------------------------- attributes


def _int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _ints(v, n: int | None = None) -> bool:
    return isinstance(v, list) and (n is None or len(v) == n) and all(_int(x) for x in v) and len(v) >= 1


def attrs_problem(root) -> str | None:
    """What is wrong with a store's attributes (a value of the wrong type, a matrix without its shape), or None.
    Readers and writers check this once when they open a store, instead of failing deep inside."""
    from specdyn.store.layout import matrix_names

    a = root.attrs.get("specdyn")
    if not isinstance(a, dict):
        return "attrs['specdyn'] is not a JSON object"
    if not _int(a.get("top")):
        return f"top is {a.get('top')!r}, not a whole number"
    for key in ("heads", "kv_heads"):
        if a.get(key) is not None and not _int(a[key], 1):
            return f"{key} is {a[key]!r}, not a positive whole number"
    sources = a.get("sources", [])
    if not isinstance(sources, list) or not all(
        isinstance(s, dict) and isinstance(s.get("run_dir"), str) for s in sources
    ):
        return "sources is not a list of {run_dir: path}"
    for key in ("svd_routes", "tied", "refused"):
        if not isinstance(a.get(key, {}), dict):
            return f"{key} is not a JSON object"
    m = root["matrix"].attrs
    tables = {key: m.get(key) for key in ("shapes", "original_shapes", "kinds")}
    for key, table in tables.items():
        if not isinstance(table, dict):
            return f"matrix attribute {key} is not a JSON object"
    with reading(
        getattr(root.store, "root", root.store_path), "matrix", OVERWRITE
    ):  # the names of the matrices: nothing to recompute into
        names = matrix_names(root)
    for name in names:
        if not _ints(tables["shapes"].get(name), 2):
            return f"the shape of matrix {name!r} is {tables['shapes'].get(name)!r}, not two whole numbers"
        if not _ints(tables["original_shapes"].get(name)):
            return (
                f"the original shape of matrix {name!r} is {tables['original_shapes'].get(name)!r}, not whole numbers"
            )
        if not isinstance(tables["kinds"].get(name), str):
            return f"the kind of matrix {name!r} is {tables['kinds'].get(name)!r}, not a name"
    for key in ("orientation", "fused"):
        if not isinstance(m.get(key) or {}, dict):
            return f"matrix attribute {key} is not a JSON object"
    pairs = root["pair"].attrs.get("pairs", [])
    fields = ("name", "prev", "next", "kind")
    if not isinstance(pairs, list) or not all(
        isinstance(p, dict) and all(isinstance(p.get(f), str) for f in fields) for p in pairs
    ):
        return "pair attribute pairs is not a list of {name, prev, next, kind}"
    return None


def refuse_damaged(store: Path, root=None) -> None:
    """One line naming what is missing or malformed in a store, before anything reads it in earnest."""
    from specdyn.store.layout import missing_arrays

    root = root if root is not None else _open(store)
    with reading(store, "matrix", OVERWRITE):
        missing = missing_arrays(root)
        # consolidated metadata still lists an array whose folder was deleted since: look on disk too
        missing += [n for n in _arrays(root) if n not in missing and not (Path(store) / n / "zarr.json").is_file()]
    if missing:
        listed = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        if any(n in missing for n in NAMING):
            raise SpecdynError(
                f"{store}: incomplete store (no {listed}): its creation was interrupted, or it lost what names its "
                "rows; rerun `specdyn analyze` on its run dir (with --overwrite if it refuses)"
            )
        raise SpecdynError(f"{store}: damaged store (no {listed}); {REPAIR}")
    problem = attrs_problem(root)
    if problem:
        raise SpecdynError(f"{store}: damaged attributes ({problem}); {OVERWRITE}")


def _open(store: Path, mode: str = "r"):
    """The store's root group without consolidated metadata (what is on disk now)."""
    import zarr

    return zarr.open_group(str(store), mode=mode, use_consolidated=False)


def _arrays(root) -> list[str]:
    """The paths of every schema-1 array of a store (root arrays, then each matrix's)."""
    from specdyn.store.layout import SCHEMA1_MATRIX, SCHEMA1_ROOT, Slots

    groups = Slots(root).groups() if "matrix" in root else []
    return list(SCHEMA1_ROOT) + [f"{g}/{a}" for g in groups for a in SCHEMA1_MATRIX]


# ----------------------------------------------------------------------------------------------- finding damage


def _chunk_rows(arr) -> set[int] | None:
    """The rows whose chunk of a checkpoint-axis array exists as a file (None where the store cannot list)."""
    rows = arr.metadata.chunk_grid.chunk_shape[0]
    try:
        keys = _chunk_keys(arr)
    except (NotImplementedError, OSError):
        return None
    return {r for _, first in keys for r in range(first, first + rows)}


def _chunk_keys(arr) -> list[tuple[str, int]]:
    """(store key, first row) of every chunk (or shard) file of a checkpoint-axis array."""
    from zarr.core.sync import sync

    prefix = arr.store_path.path + "/"
    store = arr.store_path.store

    async def keys():
        return [k async for k in store.list_prefix(prefix)]

    rows = arr.metadata.chunk_grid.chunk_shape[0]
    out = []
    for k in sync(keys()):
        key = k[len(prefix) :]
        first = key[1:].lstrip("./").replace("/", ".").split(".")[0] if key.startswith("c") else ""
        if first.isdigit():
            out.append((k, int(first) * rows))
    return out


def _clear_row(arr, i: int) -> None:
    """Row i of an array reads as its fill value: written over, or, where the write must read a damaged shard
    first (many matrices packed in one file), the files holding the row deleted."""
    from zarr.core.sync import sync

    try:
        arr[i] = arr.metadata.fill_value
    except DECODE_ERRORS:
        rows = arr.metadata.chunk_grid.chunk_shape[0]
        for key, first in _chunk_keys(arr):
            if first <= i < first + rows:
                sync(arr.store_path.store.delete(key))


def unreadable(root) -> dict[str, list[int]]:
    """{array path: rows} of every checkpoint-axis array chunk that cannot be decoded (the whole store is read)."""
    from specdyn.store.layout import checkpoint_arrays

    out = {}
    for arr in checkpoint_arrays(root):
        try:
            arr[...]
            continue
        except DECODE_ERRORS:
            pass
        bad = []
        for i in range(arr.shape[0]):
            try:
                arr[i]
            except DECODE_ERRORS:
                bad.append(i)
        out[arr.path] = bad
    return out


def missing_chunks(root, done: np.ndarray) -> dict[str, list[int]]:
    """{array path: rows} of done rows whose chunk of a matrix's sv, U or V (or of the row metrics) is gone: zarr
    reads a missing chunk as its fill value, so a deleted file would pass for NaN. A chunk absent because its
    values equal the fill (a NaN spectrum) is told apart by the row's spectral norm, which is NaN then too."""
    from specdyn.store.layout import ROW_METRICS, Slots, matrix_names

    rows = np.flatnonzero(done)
    if not len(rows):
        return {}
    norm = root["spectral_norm"][:]
    out: dict[str, list[int]] = {}
    any_sv = np.zeros(len(done), bool)
    slots = Slots(root)
    if slots.packed:  # shards of many matrices (schema 2): a missing inner chunk is not seen from the files
        return {}
    for j, name in enumerate(matrix_names(root)):
        g = root[slots.group(name)]
        have = _chunk_rows(g["sv"])
        if have is None:
            return {}
        finite = np.isfinite(norm[:, j])
        any_sv[sorted(have & set(range(len(done))))] = True
        lost = [int(i) for i in rows if i not in have and finite[i]]
        if lost:
            out[g["sv"].path] = lost
        for what in ("U", "V"):
            arr = g[what]
            if arr.size == 0:
                continue
            present = _chunk_rows(arr)
            lost = [int(i) for i in rows if i in have and i not in present]
            if lost:
                out[arr.path] = lost
    for name in ROW_METRICS:
        present = _chunk_rows(root[name])
        lost = [int(i) for i in rows if any_sv[i] and i not in present]
        if lost:
            out[root[name].path] = lost
    return out


def describe(found: dict[str, list[int]]) -> str:
    """'matrices/a/sv (rows 1, 4), ...' for a message."""
    parts = [f"{name} (row{'s' if len(r) > 1 else ''} {', '.join(map(str, r[:4]))}{' ...' if len(r) > 4 else ''})"
             for name, r in found.items()]  # fmt: skip
    return ", ".join(parts[:3]) + (f" and {len(parts) - 3} more arrays" if len(parts) > 3 else "")


# ----------------------------------------------------------------------------------------------- repair


def repair(store: Path) -> int:
    """Under the lock: recreate missing per-row arrays, overwrite every damaged chunk with its fill value and mark
    the rows they belong to undone, so that this run recomputes them from their checkpoints. Returns the rows."""
    from specdyn import console
    from specdyn.store.layout import IDENTITY, array_names

    root = _open(store, "a")
    have = array_names(root)
    lost = [n for n in (*NAMING, "stability", "alignment", "alignment_score") if n not in have]
    if lost:  # what names the rows, matrices and pairs is gone: there is nothing to recompute rows into
        raise SpecdynError(f"{store}: damaged beyond repair (no {', '.join(lost[:3])}); {OVERWRITE}")
    problem = attrs_problem(root)
    if problem:
        raise SpecdynError(f"{store}: damaged attributes ({problem}); {OVERWRITE}")
    recreated = _recreate(root)
    rows = root["done"].shape[0]
    found = unreadable(root)
    if "done" in found:  # an unreadable done flag: the row counts as not done
        for i in found.pop("done"):
            root["done"][i] = False
    for path, rws in found.items():  # what cannot be decoded reads as its fill value from now on
        for i in rws:
            _clear_row(root[path], i)
    for path, rws in missing_chunks(root, root["done"][:]).items():
        found[path] = sorted(set(found.get(path, [])) | set(rws))
    for path in recreated:
        found[path] = list(range(rows))
    bad = sorted({i for r in found.values() for i in r})
    for i in bad:
        root["done"][i] = False
        if any(i in found.get(n, ()) for n in IDENTITY):  # whose row it was is lost: the row is dropped
            root["step"][i], root["checkpoint"][i], root["source"][i] = -1, "", -1
    if bad:
        console.warn(f"{store}: repairing {describe(found)}: {len(bad)} rows recomputed from their checkpoints")
    return len(bad)


def _recreate(root) -> list[str]:
    """Create the per-row arrays a damaged store lost (a deleted `matrices/<name>/` folder), as many rows as the
    store and empty; returns their paths (every row of them is to be recomputed)."""
    from specdyn.store.layout import SCHEMA1_ROOT, Slots, _array, array_names, metric_array, specs_of

    made = []
    top = int(root.attrs["specdyn"]["top"])
    rows, M = root["done"].shape[0], root["matrix"].shape[0]
    have = array_names(root)
    for name in SCHEMA1_ROOT:
        if name not in have and name not in ("matrix", "pair", "stability", "alignment", "alignment_score"):
            metric_array(root, name, rows, M)
            made.append(name)
    slots = Slots(root)
    for s in specs_of(root):
        g = root.require_group(slots.group(s.name))
        have_m = array_names(g)
        if slots.packed:
            if any(a not in have_m for a in ("sv", "U", "V")):
                raise SpecdynError(f"{root.store_path}: damaged beyond repair (no {slots.group(s.name)}); {OVERWRITE}")
            continue
        m, n = s.shape
        r = min(top, s.k)
        for what, shape, chunks, dims in (  # as layout.create_layout makes them
            ("sv", (rows, s.k), (1, s.k), ("checkpoint", "k")),
            ("U", (rows, m, r), (1, m, max(r, 1)), ("checkpoint", "m", "top")),
            ("V", (rows, n, r), (1, n, max(r, 1)), ("checkpoint", "n", "top")),
        ):
            if what not in have_m:
                dtype, codec = ("float64", "auto") if what == "sv" else ("float32", None)
                _array(g, what, shape, chunks, dtype, dims, compressors=codec)
                made.append(f"{slots.group(s.name)}/{what}")
    return made
