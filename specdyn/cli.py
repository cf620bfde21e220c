"""The `specdyn` command line: a typer app with one module per command under `specdyn/commands/`.

Each command module exposes `register(app)`. Heavy imports (torch, matplotlib, zarr) happen inside the
commands so that `specdyn --help` stays fast.
"""

import errno
import functools
import importlib
import os

# Idle OpenMP threads (torch) must not spin while OpenBLAS (numpy) works: on 2 cores that halves both.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from specdyn.errors import SpecdynError
from specdyn.version import __version__

# The command registry: module names under specdyn.commands, in the order `--help` lists them.
COMMANDS = [
    "fetch",
    "analyze",
    "info",
    "train",
    "prune_eval",
    "interpolate",
    "lottery",
    "plot",
    "report",
    "derive",
    "export",
]

app = typer.Typer(
    help="Spectral dynamics of weights: analyze checkpoint series into a zarr store, then plot and evaluate.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"specdyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    pass


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
            with cli_mode():  # warnings as one line each on stderr, not Python warnings too
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


for _name in COMMANDS:
    importlib.import_module(f"specdyn.commands.{_name}").register(app)


def main():
    app(prog_name="specdyn")
