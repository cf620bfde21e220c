"""`specdyn plot KIND STORE [STORE ...] -o FILE`: one of the paper's figures from one or more stores."""

from pathlib import Path
from typing import Annotated

import typer

from specdyn.commands.common import cli_command
from specdyn.plots.options import PlotOptions
from specdyn.plots.registry import KINDS


def plot_command(
    kind: Annotated[str, typer.Argument(help=f"Figure kind: {', '.join(KINDS)}.", show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file; png, svg or pdf by suffix.", show_default=False)
    ],
    stores: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Stores (or run dirs holding specdyn.zarr); compare may take only --group.", show_default=False
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help='Print {"written": [paths]} on stdout.')] = False,
    *,
    opts: PlotOptions,
):
    """Draw one figure kind from one or more stores (plots read only the store and the runs' run.json)."""
    from specdyn import console
    from specdyn.errors import SpecdynError
    from specdyn.files import output_path
    from specdyn.plots import style
    from specdyn.plots.dispatch import check_kind, make_figure, open_stores

    check_kind(kind)
    if out.suffix.lower() not in style.FORMATS:  # before any drawing
        raise SpecdynError(f"{out}: unknown figure format {out.suffix or '(none)'!r}; use .png, .svg or .pdf")
    output_path(out, named=True, create=False)  # a folder or a file in the way: one line before any drawing
    fig = make_figure(kind, open_stores(stores or [], kind), **opts.given())
    path = style.save(fig, out, opts.dpi)
    if json_out:
        console.print_json({"written": [str(path)]})
    else:
        console.info(f"wrote {path}")


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("plot")(user_errors(cli_command(plot_command, PlotOptions)))
