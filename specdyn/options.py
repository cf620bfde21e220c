"""Options declared once: a dataclass per command whose fields carry their CLI flag and help, and validate
themselves, so the Python API and the CLI refuse the same inputs with the same one-line message.

    @dataclass(frozen=True)
    class PruneOptions(Options):
        every: int | None = option(None, help="Every N-th analyzed checkpoint.", min=1)

`specdyn.commands.common.cli_command(fn, PruneOptions)` turns a command function whose last parameter is
`opts: PruneOptions` into a typer command with one flag per field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from specdyn.errors import SpecdynError

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *flags: str,
    help: str,
    factory: Callable | None = None,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[str] | None = None,
    panel: str | None = None,
    metavar: str | None = None,
    show_default: bool | str = True,
    hidden: bool = False,
    cli: bool = True,
    parse: Callable | None = None,
):
    """A dataclass field with its CLI flag(s) (default `--field-name`), help, and the checks every caller gets.
    `parse` turns the CLI's strings into the field's value (e.g. "0.1,0.5" into fractions)."""
    meta = {
        "parse": parse,
        "flags": flags,
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices else None,
        "panel": panel,
        "metavar": metavar,
        "show_default": show_default,
        "hidden": hidden,
        "cli": cli,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"specdyn": meta})
    return dataclasses.field(default=default, metadata={"specdyn": meta})


def flag_of(f: dataclasses.Field) -> str:
    meta = f.metadata.get("specdyn", {})
    flags = [x for x in meta.get("flags", ()) if x.startswith("--")]
    return flags[0].split("/")[0] if flags else "--" + f.name.replace("_", "-")


class Options:
    """Base of the option dataclasses: checks every field's declared bounds and choices, then `check()`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            meta = f.metadata.get("specdyn")
            if meta:
                _check_field(f, getattr(self, f.name), meta)
        self.check()

    def check(self) -> None:
        """Checks across fields; subclasses raise SpecdynError naming the flag."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _check_field(f: dataclasses.Field, value, meta: dict) -> None:
    if value is None:
        return
    flag = flag_of(f)
    values = value if isinstance(value, (list, tuple)) and not isinstance(value, str) else [value]
    for v in values:
        if meta["choices"] and v not in meta["choices"]:
            raise SpecdynError(f"{flag} {v!r}: use {', '.join(meta['choices'])}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if meta["min"] is not None and v < meta["min"]:
            raise SpecdynError(f"{flag} {v}: must be at least {meta['min']:g}")
        if meta["max"] is not None and v > meta["max"]:
            raise SpecdynError(f"{flag} {v}: must be at most {meta['max']:g}")


TRUST_PICKLE_HELP = "Allow arbitrary pickle in torch checkpoints (runs code: only for files you trust)."


def trust_pickle_option():
    return option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)
