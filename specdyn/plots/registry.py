"""The registry of figure kinds: kind -> the module under `specdyn.plots` whose `plot(stores, **options)` draws it.

Modules are imported on first use, so listing the kinds (for `--help`) does not import matplotlib. Adding a kind
is a module with a `plot` function plus a line here.
"""

import importlib
from collections.abc import Callable, Iterator, Mapping

_MODULES = {
    "rank-heatmap": "rank_heatmap",
    "sv": "sv",
    "stability": "stability",
    "alignment": "alignment",
    "metrics": "metrics",
    "grokking": "grokking",
    "compare": "compare",
    "prune": "prune",
    "interp": "interp",
    "esd": "esd",
    "intruders": "intruders",
    "base-overlap": "base_overlap",
    "delta-rank": "delta_rank",
    "lottery": "lottery",
}


class _Plots(Mapping):
    """kind -> plot function, importing each kind's module when it is first looked up."""

    def __getitem__(self, kind: str) -> Callable:
        return importlib.import_module(f"specdyn.plots.{_MODULES[kind]}").plot

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


PLOTS: Mapping[str, Callable] = _Plots()
KINDS = tuple(_MODULES)
