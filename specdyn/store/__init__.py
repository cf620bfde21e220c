"""The zarr store, the only code that knows its layout (docs/store.md is the contract).

`layout`: names, paths and arrays; `locking`: the store's lock; `writing`: write sessions, rows, derived arrays
and rebuilds; `swap`: replacing a folder without losing it (whole stores and result groups); `damage`: damaged
chunks and attributes named in one line, and `analyze --repair`; `results`: the
evaluations' `evals/<name>` groups; `reading`: `SpectralStore`.
"""

from specdyn.store.layout import (
    DERIVED_METRICS,
    LOCK_NAME,
    METRICS,
    ROW_METRICS,
    SCHEMA_VERSION,
    STORE_NAME,
    default_store,
    is_store,
    resolve_store,
)
from specdyn.store.locking import locked
from specdyn.store.reading import SpectralStore
from specdyn.store.writing import consolidate, write_session

__all__ = [
    "DERIVED_METRICS",
    "LOCK_NAME",
    "METRICS",
    "ROW_METRICS",
    "SCHEMA_VERSION",
    "STORE_NAME",
    "SpectralStore",
    "consolidate",
    "default_store",
    "is_store",
    "locked",
    "resolve_store",
    "write_session",
]
