"""The one store migration: run when a store is opened for writing (`writing.write_session`), it brings the store
to this version's layout, keyed by the schema version it records, and adds the arrays of every declared metric
(spectral.metrics.METRICS) and file identity that the store lacks. Readers never migrate: they read what is there
(a missing metric is computed from the stored singular values where it can be, else read as missing).

A metric array added to a store that already has rows is listed in the `unfilled` attribute before the array is
created (so a kill in between loses nothing); `specdyn derive`, or the next analyze, computes it from the stored
singular values (or vectors) and takes it off the list. The checkpoints are never read again.
"""

from __future__ import annotations

from specdyn.store import faults, layout

# schema version v -> the step that turns a version-v store into a version v+1 one (idempotent, kill-safe).
# 1 -> 2: nothing to move. Schema 2 adds two ways of holding matrices (hashed keys, `svd/` shape buckets) that
# only new stores use; a schema-1 store's per-matrix groups are valid schema 2 as they are.
STEPS: dict = {1: lambda st: None}


def migrate(st) -> list[str]:
    """Bring an opened, writable `store.handle.Store` to this version's schema; returns the arrays it added."""
    root = st.root
    attrs = layout.read_attrs(root)
    version = attrs.get("schema_version") if isinstance(attrs.get("schema_version"), int) else 1
    added = add_missing_arrays(st)
    for v in range(version, layout.SCHEMA_VERSION):
        STEPS[v](st)
        faults.point("migrate")
    if version < layout.SCHEMA_VERSION:
        _set_attrs(root, schema_version=layout.SCHEMA_VERSION)
    return added


def add_missing_arrays(st) -> list[str]:
    """Create the declared metric arrays and the file-identity arrays a store lacks (NaN / -1, as many rows as the
    store); metrics added to a store with rows are first listed as `unfilled`."""
    root, have = st.root, st.arrays
    metrics = [name for name in layout.STORED_METRICS if name not in have]
    files = [name for name in layout.FILE_ARRAYS if name not in have]
    if not metrics and not files:
        return []
    rows, M = root["done"].shape[0], root["matrix"].shape[0]
    if metrics and rows:
        unfilled = list(layout.read_attrs(root).get("unfilled", []))
        _set_attrs(root, unfilled=unfilled + [n for n in metrics if n not in unfilled])
    for name in metrics:
        layout.metric_array(root, name, rows, M)
        faults.point("migrate")
    for name in files:
        layout.file_array(root, name, rows)
    st.refresh()
    return metrics + files


def mark_filled(root, names) -> None:
    """Take metrics off the `unfilled` list once their values are written for every completed row."""
    unfilled = layout.read_attrs(root).get("unfilled")
    if unfilled and any(n in unfilled for n in names):
        _set_attrs(root, unfilled=[n for n in unfilled if n not in names])


def _set_attrs(root, **changes) -> None:
    root.attrs["specdyn"] = {**layout.read_attrs(root), **changes}
    faults.point("attrs")
