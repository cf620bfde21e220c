"""What the commands share: building a typer command from an options dataclass, the flags every command spells
the same way (`JsonFlag`, `QuietFlag`), and `user_errors`, which turns a user's error into one line and an exit code."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from specdyn.errors import SpecdynError
from specdyn.options import _MISSING, flag_of

__all__ = ["JsonFlag", "QuietFlag", "cli_command", "deprecated", "flag_of", "plain", "user_errors"]


def _cli_type(tp):
    """The type typer parses a field as: optional scalars stay optional, lists of str stay lists."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, Sequence) or (args and typing.get_origin(args[0]) is list):
        return typing.Optional[list[str]]  # noqa: UP045 - typer needs typing.Optional here
    if args and len(args) == 1 and type(None) in typing.get_args(tp):
        return typing.Optional[args[0]]  # noqa: UP045
    return tp


def _field_parameter(f: dataclasses.Field, hints: dict, hide: bool = False) -> inspect.Parameter:
    meta = f.metadata["specdyn"]
    tp = hints[f.name]
    flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
    default = f.default if f.default is not _MISSING else None
    given = f.default is not _MISSING and f.default is not None
    show_default = meta["show_default"] if given or isinstance(meta["show_default"], str) else False
    info = typer.Option(
        *flags,
        help=plain(meta["help"]),
        rich_help_panel=meta["panel"],
        metavar=meta["metavar"],
        show_default=show_default,
        hidden=meta["hidden"] or hide,
    )
    if meta["parse"] is not None:  # the CLI gives strings (repeatable for list and dict fields); parse converts
        many = (
            typing.get_origin(tp) in (list, dict) or tp in (list, dict) or _cli_type(tp) == typing.Optional[list[str]]
        )
        tp = typing.Optional[list[str]] if many else typing.Optional[str]  # noqa: UP045
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[_cli_type(tp), info]
    )


def _old_parameter(f: dataclasses.Field, new: inspect.Parameter) -> inspect.Parameter:
    """A hidden flag under a field's former spelling, parsed as the new one is."""
    tp, info = typing.get_args(new.annotation)
    old = typer.Option(f.metadata["specdyn"]["old"], hidden=True, show_default=False)
    return inspect.Parameter(
        f.name + OLD,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[typing.Optional[tp], old],  # noqa: UP045
    )


OLD = "__old"  # suffix of the parameter that takes a former spelling of a flag


def deprecated(old: str, new: str) -> None:
    """The one-line note for a former spelling of a flag, which keeps working (shown under --quiet too, as
    warnings are)."""
    from specdyn import console

    console.err_console().print(
        f"[yellow]note:[/yellow] {old} is now {new}; the old spelling will go in a later release"
    )


def plain(text: str | None) -> str | None:
    """Help text shown as written: typer reads `[word]` as rich markup and would drop it."""
    return text.replace("[", "\\[") if text else text


def cli_command(fn: Callable, options_cls: type, hidden: set[str] = frozenset()) -> Callable:
    """A typer command: `fn`'s own parameters, then one flag per field of `options_cls`; the fields are gathered
    into `options_cls(...)` (validated there) and passed to `fn` as `opts`. Fields in `hidden` stay out of --help."""
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "opts"]
    hints = typing.get_type_hints(options_cls)
    fields = [f for f in dataclasses.fields(options_cls) if f.metadata.get("specdyn", {}).get("cli")]
    params = own + [_field_parameter(f, hints, f.name in hidden) for f in fields]
    params += [_old_parameter(f, p) for f, p in zip(fields, params[len(own) :]) if f.metadata["specdyn"]["old"]]
    names = {f.name for f in fields}

    @functools.wraps(fn)
    def command(*args, **kwargs):
        for f in fields:
            old = kwargs.pop(f.name + OLD, None)
            if old is not None and old is not False and old != []:
                deprecated(f.metadata["specdyn"]["old"], flag_of(f))
                if kwargs.get(f.name) in (None, [], f.default):
                    kwargs[f.name] = old
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
QuietFlag = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar and no messages on stderr (errors and warnings still print)."),
]


# Failures of the machine a user can fix (a full disk, a read-only or forbidden folder): one line, not a traceback.
FIXABLE_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some space (or write elsewhere) and rerun",
    errno.EDQUOT: "disk quota exceeded; free some space (or write elsewhere) and rerun",
    errno.EROFS: "read-only file system; write the output elsewhere",
    errno.EACCES: "permission denied; check the folder's permissions or write elsewhere",
}


def os_error_message(e: OSError) -> str | None:
    """The one-line message of an OSError a user can fix, naming the file; None for any other OSError."""
    what = FIXABLE_OS_ERRORS.get(e.errno)
    if what is None:
        return None
    where = e.filename or "a file specdyn was writing"
    return f"{where}: {what}"


def user_errors(fn):
    """Turn a SpecdynError into `error: ...` on stderr and its exit code (and a full disk, a read-only or
    forbidden folder into one such line too); KeyboardInterrupt into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from specdyn.console import cli_mode, err_console
        from specdyn.files import name_text

        try:
            with cli_mode(
                quiet=bool(kwargs.get("quiet"))
            ):  # warnings as one line each on stderr, not Python warnings too
                return fn(*args, **kwargs)
        except SpecdynError as e:
            from rich.text import Text

            err_console().print(Text.assemble(("error:", "red"), " ", name_text(e.message)), soft_wrap=True)
            raise typer.Exit(e.code) from None
        except OSError as e:
            message = os_error_message(e)
            if message is None:
                raise
            from rich.text import Text

            err_console().print(Text.assemble(("error:", "red"), " ", name_text(message)), soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console().print("interrupted")
            raise typer.Exit(130) from None

    return wrapper
