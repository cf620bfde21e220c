"""specdyn: the spectral dynamics of weights over a training run.

Analyze a checkpoint series once into a zarr store (`specdyn analyze`), then plot, report and evaluate it.

    import specdyn
    specdyn.analyze(["runs/wd1"], options=specdyn.AnalyzeOptions(topk=32))
    st = specdyn.open_store("runs/wd1")          # a SpectralStore; st.to_dataframe() for pandas

Names are imported on first use, so `import specdyn` stays light.
"""

import importlib

from specdyn.version import __version__

# The public API: name -> the module that defines it.
_API = {
    "analyze": "specdyn.analyze",
    "AnalyzeOptions": "specdyn.analyze",
    "SpectralStore": "specdyn.store",
    "discover": "specdyn.io",
    "open_checkpoint": "specdyn.io",
    "CheckpointReader": "specdyn.io",
    "FORMATS": "specdyn.io",
    "SpecdynError": "specdyn.errors",
}


def open_store(path):
    """Open a specdyn zarr store (or a run dir holding `specdyn.zarr`) read-only; see `SpectralStore`."""
    from specdyn.store import SpectralStore, resolve_store

    return SpectralStore.open(resolve_store(path))


def to_dataframe(stores, metrics=None, steps=None, matrices=None):
    """Several stores (or run dirs) as one long pandas table, with a `store` column; a dict {group: stores}
    adds a `group` column. One store: `SpectralStore.to_dataframe`, whose arguments these are."""
    from specdyn.store.frames import combined

    return combined(stores, open_store, metrics, steps, matrices)


def __getattr__(name: str):
    if name == "analyze":  # the package itself, callable as the function (specdyn/analyze/__init__.py)
        return importlib.import_module("specdyn.analyze")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'specdyn' has no attribute {name!r}")


__all__ = ["__version__", "open_store", "to_dataframe", *_API]
