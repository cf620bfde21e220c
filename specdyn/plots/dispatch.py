"""Drawing a figure kind from stores with user options: what `specdyn plot` and the report both call.

Options are checked against the plot function's own signature, so a flag that does not apply to a kind is a
one-line error naming the flags it takes.
"""

import difflib
import inspect
from pathlib import Path

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.plots.options import flags
from specdyn.plots.registry import KINDS, PLOTS

FLAGS = flags()  # CLI flag of each plot-function keyword, for messages


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        near = difflib.get_close_matches(kind, KINDS, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise SpecdynError(f"unknown plot kind {kind!r}; {hint}known: {', '.join(KINDS)}", code=EXIT_USAGE)
    return kind


def call_options(kind: str, fn, given: dict) -> dict:
    """The keyword arguments for a plot function: the options the user gave, each checked to apply to it."""
    params = inspect.signature(fn).parameters
    for name in given:
        if name not in params:
            takes = " ".join(FLAGS[p] for p in params if p in FLAGS)
            raise SpecdynError(f"{FLAGS[name]} does not apply to `{kind}`; it takes: {takes}", code=EXIT_USAGE)
    return given


def open_stores(paths: list[Path], kind: str = ""):
    """Open each store (or run dir holding one); `interp` also reads an evaluation-only `interp.zarr`."""
    from specdyn.store import SpectralStore, resolve_store
    from specdyn.store.reading import open_any

    if kind == "interp":
        return [open_any(p, "interp.zarr") for p in paths]
    return [SpectralStore.open(resolve_store(p)) for p in paths]


def make_figure(kind: str, stores, **given):
    """Draw a figure kind from opened stores with the options given (errors for options it does not take)."""
    fn = PLOTS[check_kind(kind)]
    return fn(stores, **call_options(kind, fn, given))
