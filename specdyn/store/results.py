"""Result groups of the evaluations (`evals/<name>` inside a zarr store), written so that a kill never loses data.

A result group is small (floats per checkpoint or pair), so it is handled whole: `read_group` loads it into
numpy, `write_group` writes a complete new version beside the store and swaps it in (`store.swap`, the same
swap a rebuild of the whole store uses), and `write_row` fills one row in place, its `done` flags last. Arrays
along the row axis have chunks of one row. Callers hold the store's write session (`store.write_session`), so
nobody else writes meanwhile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specdyn.store.swap import Swap

Arrays = dict[str, tuple[tuple[str, ...], np.ndarray]]  # name -> (dimension names, values)


def _swap(store: Path, group: str) -> Swap:
    return Swap(Path(store) / group, beside=Path(store), tag=group)


def recover(store: Path, group: str) -> None:
    """Finish or undo a `write_group` that was killed part-way."""
    _swap(store, group).recover()


def mark_results_only(store: Path, root) -> None:
    """Label a zarr folder that holds evaluation results but no spectra (interpolate's standalone interp.zarr)."""
    from specdyn.store.layout import is_store

    if not is_store(store) and "specdyn_evals" not in root.attrs:
        root.attrs["specdyn_evals"] = {"schema_version": 1, "contents": "evaluation results only (no spectra)"}


def has_group(store: Path, group: str) -> bool:
    return (Path(store) / group / "zarr.json").exists()


def read_group(store: Path, group: str) -> tuple[Arrays, dict] | None:
    """Every array of a result group with its dimension names, and its `specdyn` attributes; None if absent."""
    import zarr

    path = Path(store) / group
    if not (path / "zarr.json").exists():
        return None
    g = zarr.open_group(str(path), mode="r", use_consolidated=False)
    arrays = {}
    for name, arr in g.arrays():  # this group's own arrays (subgroups are read with their own path)
        data = arr[...]
        if data.dtype.kind in "OTU":
            data = np.array([str(x) for x in np.ravel(data)], dtype=object).reshape(data.shape)
        arrays[name] = (tuple(arr.metadata.dimension_names or ()), data)
    return arrays, dict(g.attrs.get("specdyn", {}))


def _create(
    g, name: str, dims: tuple[str, ...], data: np.ndarray, row_dims: tuple[str, ...], coords: list[str]
) -> None:
    if "/" in name:  # an array of a subgroup (e.g. one masked run of the lottery results)
        parent, name = name.rsplit("/", 1)
        g = g.require_group(parent)
    data = np.asarray(data)
    if data.dtype.kind in "OTU":
        dtype, fill = str, ""
    elif data.dtype.kind == "b":
        dtype, fill = "bool", False
    elif data.dtype.kind in "iu":
        dtype, fill = "int64", -1
    else:
        dtype, fill = "float64" if data.dtype.itemsize >= 8 else "float32", np.nan
    shape = data.shape
    chunks = tuple(1 if d in row_dims else max(n, 1) for d, n in zip(dims, shape))
    arr = g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims)
    if coords and name not in coords and any(d in dims for d in row_dims):
        arr.attrs["coordinates"] = " ".join(coords)  # xarray shows these as coordinates of the row axis
    if data.size:
        arr[...] = data.astype(object) if dtype is str else data


def write_group(
    store: Path,
    group: str,
    arrays: Arrays,
    attrs: dict,
    row_dim: str | tuple[str, ...] | None = None,
    coords: list[str] | None = None,
    group_attrs: dict[str, dict] | None = None,
) -> None:
    """Replace (or create) `store/group` with exactly these arrays and attributes, safely against kills.

    Array names may hold a subgroup path (`runs/a/sva_diag`); `group_attrs` gives such subgroups their
    `specdyn` attributes. Arrays along a `row_dim` get chunks of one row; `coords` names the row-axis arrays
    (step, checkpoint, ...) that xarray should treat as coordinates."""
    import zarr

    row_dims = (row_dim,) if isinstance(row_dim, str) else tuple(row_dim or ())
    store = Path(store)
    for name, (dims, data) in arrays.items():
        if len(dims) != np.ndim(data):
            raise ValueError(f"{group}/{name}: {len(dims)} dimension names for a {np.ndim(data)}-d array")
    swap = _swap(store, group)
    g = zarr.open_group(str(swap.begin()), mode="w-")
    g.attrs["specdyn"] = attrs
    for name, (dims, data) in arrays.items():
        _create(g, name, dims, data, row_dims, coords or [])
    for sub, sub_attrs in (group_attrs or {}).items():
        g.require_group(sub).attrs["specdyn"] = sub_attrs
    _ensure_groups(store, group)
    swap.commit()


def _ensure_groups(store: Path, group: str) -> None:
    """The intermediate groups (`evals`) exist as zarr groups, so the hierarchy opens with zarr and xarray."""
    import zarr

    parts = group.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        path = store.joinpath(*parts[:i])
        if not (path / "zarr.json").exists():
            zarr.open_group(str(path), mode="a")


def open_group(store: Path, group: str):
    import zarr

    return zarr.open_group(str(Path(store) / group), mode="r+", use_consolidated=False)


def write_row(g, i: int, values: dict[str, np.ndarray], done: dict[str, np.ndarray]) -> None:
    """Write row i of the arrays in `values`, then the `done` arrays (flags last: a kill leaves the row undone)."""
    for name, v in values.items():
        g[name][i] = v
    for name, v in done.items():
        g[name][i] = v


def set_attrs(g, attrs: dict) -> None:
    g.attrs["specdyn"] = attrs


def rel_or_abs(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies below it (so a moved folder keeps working), else absolute."""
    path, base = Path(path).resolve(), Path(base).resolve()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
