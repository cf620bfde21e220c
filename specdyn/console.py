"""Shared rich consoles: human output and progress on stderr, machine-readable output on stdout."""

import contextlib
import contextvars
import json
import sys
import warnings

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from specdyn.files import name_text


def err_console() -> Console:
    # Built per call so that typer's CliRunner, which swaps sys.stderr, captures it.
    return Console(file=sys.stderr, highlight=False)


def progress(transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar on stderr; on a non-TTY it prints one final line (good for CI logs)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=transient,
        disable=disable,
    )


class SpecdynWarning(UserWarning):
    """What specdyn warns about (a skipped checkpoint, NaN weights, a newer store): catch or filter it by class."""


# In a command (`cli_mode`), a warning is one rich line on stderr; from the Python API it is a Python warning
# (SpecdynWarning), never both: the two together printed every warning three times.
_cli = contextvars.ContextVar("specdyn_cli", default=False)
_budget = contextvars.ContextVar("specdyn_warning_budget", default=None)
WARNING_LIMIT = 10  # warnings of one kind shown per run before they are counted into one summary line


_quiet = contextvars.ContextVar("specdyn_quiet", default=False)


@contextlib.contextmanager
def cli_mode(quiet: bool = False):
    """A command's output: warnings as one line each on stderr; with `quiet` (--quiet), no `info` lines."""
    token, quiet_token = _cli.set(True), _quiet.set(quiet)
    try:
        yield
    finally:
        _cli.reset(token)
        _quiet.reset(quiet_token)


@contextlib.contextmanager
def warning_budget(limit: int = WARNING_LIMIT, hint: str = "see specdyn info"):
    """Within the block, show at most `limit` warnings of each kind; at its end, one line counts the rest
    (`... and 9,990 more skipped; see specdyn info`)."""
    counts: dict[str, int] = {}
    token = _budget.set((limit, counts))
    try:
        yield
    finally:
        _budget.reset(token)
        for kind, n in counts.items():
            if n > limit:
                _emit(f"... and {n - limit:,} more {kind}; {hint}")


def warn(message: str, kind: str = "warnings") -> None:
    """A one-line warning (see `cli_mode`); inside a `warning_budget`, counted under `kind`."""
    budget = _budget.get()
    if budget is not None:
        limit, counts = budget
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] > limit:
            return
    _emit(message)


def _emit(message: str) -> None:
    message = name_text(message)  # a file name that is not UTF-8 shows as \xHH, as the store records it
    if _cli.get():
        from rich.text import Text

        err_console().print(Text.assemble(("warning:", "yellow"), " ", message), soft_wrap=True)
    else:
        warnings.warn(message, SpecdynWarning, stacklevel=3)


def info(message: str) -> None:
    """A progress or result message on stderr (none under --quiet)."""
    if not _quiet.get():
        err_console().print(name_text(message), soft_wrap=True)


def show(renderable) -> None:
    """A table or other rich renderable on stderr (none under --quiet)."""
    if not _quiet.get():
        err_console().print(renderable)


def print_json(obj) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
