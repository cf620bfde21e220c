"""`specdyn analyze`: from checkpoint series to a zarr spectral store, incrementally and resumably.

`options`: what a run may be asked (validated once, for the API and the CLI alike); `plan`: which checkpoints
become which rows, and the checks that keep a store one architecture with one set of options; `compute`: the
SVDs, serial or over processes/Dask; `run`: the whole, under the store's lock.

The package is callable as `run.analyze`: importing it rebinds the name `specdyn.analyze` to it, and
`specdyn.analyze(...)` must work before and after that.
"""

import inspect
import sys
import types

from specdyn.analyze.options import AnalyzeOptions
from specdyn.analyze.run import analyze


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return analyze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(analyze)

__all__ = ["AnalyzeOptions", "analyze"]
