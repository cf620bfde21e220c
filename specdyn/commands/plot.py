"""`specdyn plot KIND STORE [STORE ...] -o FILE`: one of the paper's figures from one or more stores.

One subcommand per kind of the plot registry, made when it is used: its options are the `PlotOptions` fields
its plot function takes (`specdyn plot sv --help` lists those only), so a new kind needs no change here."""

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from specdyn.commands.common import QuietFlag, cli_command, plain, user_errors
from specdyn.plots.options import PlotOptions
from specdyn.plots.registry import KINDS

ALWAYS = ("dpi", "title")  # options of every kind (dpi is for saving)
GROUP_FIELDS = ("group", "groups_file")  # the CLI's spelling of a plot function's `groups` keyword


def kind_fields(kind: str) -> set[str]:
    """The PlotOptions fields a kind takes: its plot function's keywords, plus dpi and title."""
    from specdyn.plots.registry import PLOTS

    params = set(inspect.signature(PLOTS[kind]).parameters)
    if "groups" in params:
        params |= set(GROUP_FIELDS)
    return params | set(ALWAYS)


def kind_command(kind: str):
    """The typer command of one plot kind; options of other kinds stay accepted but hidden, so that giving one
    says which kind takes it."""

    def draw(
        stores: Annotated[
            Optional[list[Path]],
            typer.Argument(
                help="Stores (or run dirs holding specdyn.zarr)"
                + ("; may be empty with --group." if "groups" in kind_fields(kind) else "."),
                show_default=False,
            ),
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Output file; png, svg or pdf by suffix.", show_default=False)
        ] = ...,
        json_out: Annotated[bool, typer.Option("--json", help=plain('Print {"written": [paths]} on stdout.'))] = False,
        quiet: QuietFlag = False,
        *,
        opts: PlotOptions,
    ):
        plot_kind(kind, stores or [], out, json_out, opts)

    import dataclasses

    takes = kind_fields(kind)
    hidden = {f.name for f in dataclasses.fields(PlotOptions)} - takes
    return user_errors(cli_command(draw, PlotOptions, hidden=hidden))


def plot_kind(kind: str, stores: list[Path], out: Path, json_out: bool, opts: PlotOptions) -> None:
    from specdyn import console
    from specdyn.errors import EXIT_USAGE, SpecdynError
    from specdyn.files import output_path
    from specdyn.plots import style
    from specdyn.plots.dispatch import make_figure, open_stores

    if out.suffix.lower() not in style.FORMATS:  # before any drawing
        raise SpecdynError(
            f"{out}: unknown figure format {out.suffix or '(none)'!r}; use .png, .svg or .pdf", code=EXIT_USAGE
        )
    output_path(out, named=True, create=False)  # a folder or a file in the way: one line before any drawing
    fig = make_figure(kind, open_stores(stores, kind), **opts.given())
    path = style.save(fig, out, opts.dpi)
    if json_out:
        console.print_json({"written": [str(path)]})
    else:
        console.info(f"wrote {path}")


def summary(kind: str) -> str:
    """The first sentence of a kind's module docstring, for `specdyn plot --help`."""
    import importlib

    from specdyn.plots.registry import _MODULES

    doc = inspect.getdoc(importlib.import_module(f"specdyn.plots.{_MODULES[kind]}")) or kind
    return " ".join(doc.split("\n\n")[0].split())


def short(text: str, limit: int = 72) -> str:
    """A kind's one-line description: its docstring's first clause after the kind's name."""
    text = text.split(": ", 1)[-1]
    for stop in (". ", "; "):
        text = text.split(stop)[0]
    return text if len(text) <= limit else text[: text.rfind(" ", 0, limit)] + " ..."


class PlotGroup(TyperGroup):
    """`specdyn plot KIND`: the kinds of the registry, each built on first use."""

    def list_commands(self, ctx) -> list[str]:
        return list(KINDS)

    def get_command(self, ctx, name: str):
        if name not in KINDS:
            return None
        app = typer.Typer(rich_markup_mode="rich", add_completion=False)
        text = summary(name)
        app.command(name, help=plain(text), short_help=plain(short(text)))(kind_command(name))
        return typer.main.get_command(app)

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in KINDS:
            from rich.text import Text

            from specdyn.console import err_console
            from specdyn.errors import EXIT_USAGE, SpecdynError
            from specdyn.plots.dispatch import check_kind

            try:
                check_kind(args[0])
            except SpecdynError as e:
                err_console().print(Text.assemble(("error:", "red"), " ", e.message), soft_wrap=True)
                raise typer.Exit(EXIT_USAGE) from None
        return super().resolve_command(ctx, args)


def register(app: typer.Typer) -> None:
    plots = typer.Typer(
        cls=PlotGroup,
        help="Draw one figure kind from one or more stores (plots read only the store and the runs' training logs). "
        "`specdyn plot KIND --help` lists the options of that kind.",
        no_args_is_help=True,
        rich_markup_mode="rich",
    )
    app.add_typer(plots, name="plot")
