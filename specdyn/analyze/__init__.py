"""`specdyn analyze`: from checkpoint series to a zarr spectral store, incrementally and resumably.

`options`: what a run may be asked (validated once, for the API and the CLI alike); `plan`: which checkpoints
become which rows, and the checks that keep a store one architecture with one set of options; `compute`: the
SVDs, serial or over processes/Dask; `run`: the whole, under the store's lock.
"""

from specdyn.analyze.options import AnalyzeOptions
from specdyn.analyze.run import analyze

__all__ = ["AnalyzeOptions", "analyze"]
