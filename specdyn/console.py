"""Shared rich consoles: human output and progress on stderr, machine-readable output on stdout."""

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


def err_console() -> Console:
    # Built per call so that typer's CliRunner, which swaps sys.stderr, captures it.
    return Console(file=sys.stderr, highlight=False)


def progress(transient: bool = False) -> Progress:
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
    )


def warn(message: str) -> None:
    """A one-line warning on stderr (also sent through `warnings` so the Python API can catch it)."""
    err_console().print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)
    warnings.warn(message, stacklevel=2)


def info(message: str) -> None:
    err_console().print(message, soft_wrap=True)


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
