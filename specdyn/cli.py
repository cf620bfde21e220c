"""The `specdyn` command line: a typer app with one module per command under `specdyn/commands/`.

Each command module exposes `register(app)`. Heavy imports (torch, matplotlib, zarr) happen inside the
commands so that `specdyn --help` stays fast.
"""

import importlib
import os

# Idle OpenMP threads (torch) must not spin while OpenBLAS (numpy) works: on 2 cores that halves both.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

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


for _name in COMMANDS:
    importlib.import_module(f"specdyn.commands.{_name}").register(app)


def main():
    app(prog_name="specdyn")
