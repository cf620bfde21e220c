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
from typing import Any, ClassVar

from specdyn.errors import EXIT_ERROR, EXIT_USAGE, SpecdynError

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
    old: str | None = None,
):
    """A dataclass field with its CLI flag(s) (default `--field-name`), help, and the checks every caller gets.
    `parse` turns the CLI's strings into the field's value (e.g. "0.1,0.5" into fractions); `old` is a former
    spelling of the flag that keeps working, with a one-line deprecation note."""
    meta = {
        "parse": parse,
        "old": old,
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

    error_code: ClassVar[int] = EXIT_USAGE  # a refused option is a usage error (click's convention)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            meta = f.metadata.get("specdyn")
            if meta:
                try:
                    _check_field(f, getattr(self, f.name), meta)
                except SpecdynError as e:
                    raise SpecdynError(e.message, code=self.error_code) from None
        try:
            self.check()
        except SpecdynError as e:
            if e.code != EXIT_ERROR:  # a check that names its own exit code keeps it
                raise
            raise SpecdynError(e.message, code=self.error_code) from None

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


# --- parsers of CLI strings, shared by the commands -------------------------------------------------------------


def parse_fractions(values, flag: str) -> list[float]:
    """Fractions in (0, 1] from repeated and/or comma-separated values (`--keep 0.1,0.25 --keep 0.5`)."""
    out = []
    for v in [values] if isinstance(values, str) else values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                f = float(part)
            except ValueError:
                raise SpecdynError(f"{flag} {part!r}: expected a number such as 0.5", code=EXIT_USAGE) from None
            if not 0.0 < f <= 1.0:
                raise SpecdynError(f"{flag} {f:g}: must be in (0, 1]", code=EXIT_USAGE)
            out.append(f)
    return out


def parse_key_values(items, flag: str, example: str, code: int = EXIT_USAGE) -> dict[str, str]:
    """`key=value` strings (repeated options) as a dict; values stay strings for the config to convert."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecdynError(f"{flag} {item!r}: expected KEY=VALUE (e.g. {flag} {example})", code=code)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def one_fraction(value, flag: str, takes: str) -> float:
    """One fraction in (0, 1], written as the sweeps write theirs; several are a one-line usage error."""
    fractions = parse_fractions(value, flag)
    if len(fractions) != 1:
        raise SpecdynError(f"{flag} {value}: {takes} takes one fraction", code=EXIT_USAGE)
    return fractions[0]


def fractions_option(default: list[float], *flags: str, help: str, **kw):
    """A list of fractions in (0, 1], given as repeated or comma-separated values."""
    return option(
        None,
        *flags,
        factory=lambda: list(default),
        help=help,
        parse=lambda v: parse_fractions(v, flags[0]),
        show_default=",".join(f"{f:g}" for f in default),
        **kw,
    )


TASK_HELP = (
    "Task that builds the model and data: a built-in name, path/to/file.py:object or package.module:object. "
    "Default: the task recorded in the checkpoints by `specdyn train`."
)
CONFIG_HELP = "Override a task config key (repeatable), e.g. --set data_frac=0.3 (see specdyn train --show-config)."


def task_option():
    return option(None, "--task", help=TASK_HELP, show_default=False)


DATA_HELP = (
    "Data of the hf-causal-lm / hf-masked-lm tasks: text (tokenized with the run's tokenizer) or token ids (.npy/.pt)."
)


def data_option():
    return option(None, "--data", metavar="FILE", help=DATA_HELP, show_default=False)


def config_option():
    return option(
        None,
        "--set",
        "-s",
        factory=dict,
        metavar="KEY=VALUE",
        help=CONFIG_HELP,
        parse=lambda v: parse_key_values(v, "--set", "data_frac=0.3"),
        old="--config",
    )


TRUST_PICKLE_HELP = "Allow arbitrary pickle in torch checkpoints (runs code: only for files you trust)."


def trust_pickle_option():
    return option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)
