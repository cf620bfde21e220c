"""What the commands share: building a typer command from an options dataclass, and the flags every command
spells the same way (`JsonFlag`, `QuietFlag`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from specdyn.options import _MISSING, flag_of

__all__ = ["JsonFlag", "QuietFlag", "cli_command", "flag_of"]


def _cli_type(tp):
    """The type typer parses a field as: optional scalars stay optional, lists of str stay lists."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, Sequence) or (args and typing.get_origin(args[0]) is list):
        return typing.Optional[list[str]]  # noqa: UP045 - typer needs typing.Optional here
    if args and len(args) == 1 and type(None) in typing.get_args(tp):
        return typing.Optional[args[0]]  # noqa: UP045
    return tp


def _field_parameter(f: dataclasses.Field, hints: dict) -> inspect.Parameter:
    meta = f.metadata["specdyn"]
    tp = hints[f.name]
    flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
    default = f.default if f.default is not _MISSING else None
    given = f.default is not _MISSING and f.default is not None
    show_default = meta["show_default"] if given or isinstance(meta["show_default"], str) else False
    info = typer.Option(
        *flags,
        help=meta["help"],
        rich_help_panel=meta["panel"],
        metavar=meta["metavar"],
        show_default=show_default,
        hidden=meta["hidden"],
    )
    if meta["parse"] is not None:  # the CLI gives strings (repeatable for list and dict fields); parse converts
        many = (
            typing.get_origin(tp) in (list, dict) or tp in (list, dict) or _cli_type(tp) == typing.Optional[list[str]]
        )
        tp = typing.Optional[list[str]] if many else typing.Optional[str]  # noqa: UP045
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[_cli_type(tp), info]
    )


def cli_command(fn: Callable, options_cls: type) -> Callable:
    """A typer command: `fn`'s own parameters, then one flag per field of `options_cls`; the fields are gathered
    into `options_cls(...)` (validated there) and passed to `fn` as `opts`."""
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "opts"]
    hints = typing.get_type_hints(options_cls)
    fields = [f for f in dataclasses.fields(options_cls) if f.metadata.get("specdyn", {}).get("cli")]
    params = own + [_field_parameter(f, hints) for f in fields]
    names = {f.name for f in fields}

    @functools.wraps(fn)
    def command(*args, **kwargs):
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        values = {}
        for f in fields:
            v = given.get(f.name)
            if v is None and f.default is _MISSING:
                continue  # a list option not given: the dataclass's own default
            parse = f.metadata["specdyn"]["parse"]
            if parse is not None and v is not None:
                v = parse(v)
            elif isinstance(v, Path) and hints[f.name] in (str, typing.Optional[str]):  # noqa: UP045
                v = str(v)
            values[f.name] = v
        return fn(*args, **kwargs, opts=options_cls(**values))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer must read __signature__, not the wrapped function's
    return command


# Flags every command spells the same way.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
