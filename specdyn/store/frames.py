"""Stores as tables for notebooks: one row per (checkpoint, matrix) with one column per metric (pandas), and the
store's arrays as an xarray Dataset indexed by training step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.names import shorten_names
from specdyn.selection import parse_steps
from specdyn.spectral.metrics import metrics_of
from specdyn.store.layout import BASE_METRICS, METRICS

# The columns that say which row is which, before the metric columns.
ID_COLUMNS = ("run", "step", "checkpoint", "matrix", "label", "kind", "layer")


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise SpecdynError("to_dataframe needs pandas: pip install 'specdyn[xarray]' (or pip install pandas)") from None
    return pd


def step_rows(st, steps) -> np.ndarray:
    """Indices of the completed checkpoints with the given steps: all (None), one step, several, or `a:b`."""
    have = st.steps
    if steps is None:
        return np.arange(len(have))
    if isinstance(steps, str):
        lo, hi = parse_steps(steps)
        keep = np.ones(len(have), dtype=bool)
        if lo is not None:
            keep &= have >= lo
        if hi is not None:
            keep &= have <= hi
        return np.flatnonzero(keep)
    wanted = [int(steps)] if np.isscalar(steps) else [int(s) for s in steps]
    missing = [s for s in wanted if s not in set(have.tolist())]
    if missing:
        span = f"{have[0]}..{have[-1]} ({len(have)})" if len(have) else "none yet"
        raise SpecdynError(f"{st.path}: no checkpoint at step {missing[0]}; it has steps {span}")
    return np.flatnonzero(np.isin(have, wanted))


def store_metrics(st) -> tuple[str, ...]:
    """The declared per-matrix metrics a store gives (spectral.metrics.METRICS, in declaration order): the
    base-relative ones only for a store analyzed against a base model. Info, export and tables list these."""
    return tuple(m for m in metrics_of(axis="matrix") if st.has_base or m not in BASE_METRICS)


def metric_names(metrics, st=None) -> list[str]:
    if metrics is None:
        return list(store_metrics(st)) if st is not None else list(METRICS)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    for name in names:
        if name not in METRICS:
            raise SpecdynError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return names


def store_frame(st, metrics=None, steps=None, matrices=None):
    """Long format: one row per (completed checkpoint, matrix), columns `ID_COLUMNS` then one per metric.
    `matrices` takes full names, figure labels or unique short forms; `layer` is the matrix's depth index."""
    pd = _pandas()
    names = metric_names(metrics, st)
    idx = step_rows(st, steps)
    all_names = st.matrices
    chosen = (
        [st.check_matrix(m) for m in ([matrices] if isinstance(matrices, str) else matrices)] if matrices else all_names
    )
    cols = np.array([all_names.index(m) for m in chosen], dtype=int)
    n, k = len(idx), len(cols)
    run_names = [Path(d).name for d in st.run_dirs]
    checkpoints = np.asarray(st.checkpoints, dtype=object)[idx]
    labels = dict(zip(all_names, shorten_names(all_names)))
    kinds = {m: st.matrix_spec(m).kind for m in chosen}
    data = {
        "run": np.repeat([run_names[int(s)] if int(s) < len(run_names) else "" for s in st.source_index[idx]], k),
        "step": np.repeat(st.steps[idx], k),
        "checkpoint": np.repeat(checkpoints, k),
        "matrix": np.tile(np.asarray(chosen, dtype=object), n),
        "label": np.tile(np.asarray([labels[m] for m in chosen], dtype=object), n),
        "kind": np.tile(np.asarray([kinds[m] for m in chosen], dtype=object), n),
        "layer": np.tile(cols, n),
    }
    for name in names:
        data[name] = st.metric(name)[idx][:, cols].reshape(-1)
    return pd.DataFrame(data)


def _labelled(stores) -> list[tuple[str | None, object]]:
    """(group, store) pairs: a mapping gives groups (each a store or a list of them), a list gives none."""
    if isinstance(stores, Mapping):
        out = []
        for group, members in stores.items():
            members = [members] if not isinstance(members, Iterable) or isinstance(members, (str, Path)) else members
            out += [(str(group), m) for m in members]
        return out
    if not isinstance(stores, Iterable) or isinstance(stores, (str, Path)):
        stores = [stores]
    return [(None, s) for s in stores]


def combined(stores, open_store, metrics=None, steps=None, matrices=None):
    """Several stores in one long table: a `store` column (the run dir's name, or the store's path where names
    repeat), and a `group` column when `stores` maps group names to stores (conditions of seeds). Paths are
    opened with `open_store`."""
    pd = _pandas()
    pairs = [(g, s if hasattr(s, "metric") else open_store(s)) for g, s in _labelled(stores)]
    names = [s.path.parent.name for _, s in pairs]
    if len(set(names)) < len(names):
        names = [str(s.path) for _, s in pairs]
    parts = []
    for (group, st), name in zip(pairs, names):
        df = store_frame(st, metrics, steps, matrices)
        df.insert(0, "store", name)
        if group is not None:
            df.insert(0, "group", group)
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["store", *ID_COLUMNS])


def dataset(st):
    """The root arrays over completed checkpoints as an xarray.Dataset indexed by `step`, with the checkpoint
    names as a coordinate and each matrix's figure label, kind and depth index as coordinates."""
    import xarray as xr

    ds = xr.open_zarr(str(st.path), consolidated=None)
    ds = ds.isel(checkpoint=st.rows).set_coords([c for c in ("step", "source", "done") if c in ds])
    ds = ds.assign_coords(step=("checkpoint", np.asarray(st.steps))).swap_dims(checkpoint="step")
    names = st.matrices
    ds = ds.assign_coords(
        label=("matrix", shorten_names(names)),
        kind=("matrix", [st.matrix_spec(m).kind for m in names]),
        layer=("matrix", np.arange(len(names))),
    )
    return ds.set_xindex("label")  # ds.sel(label="11.attn.in_proj"): matrices by the names figures print
