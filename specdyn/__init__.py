"""specdyn: the spectral dynamics of weights over a training run.

Analyze a checkpoint series once into a zarr store (`specdyn analyze`), then plot, report and evaluate it.
Python API: `specdyn.open_store(path)`.
"""

__version__ = "0.1.0"


def open_store(path):
    """Open a specdyn zarr store read-only; see `specdyn.store.SpectralStore`."""
    from specdyn.store import SpectralStore

    return SpectralStore.open(path)


__all__ = ["__version__", "open_store"]
