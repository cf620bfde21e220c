"""`specdyn report STORE [STORE ...] -o report.html`: one self-contained HTML page of figures and tables."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.commands.common import QuietFlag, plain


def report_command(
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="The HTML file to write.", show_default="report.html")
    ] = None,
    stores: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Stores (or run dirs holding specdyn.zarr); may be empty with --group.", show_default=False
        ),
    ] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="Page title.")] = None,
    dpi: Annotated[int, typer.Option("--dpi", help="Resolution of the embedded PNG figures.")] = 110,
    group: Annotated[
        Optional[list[str]],
        typer.Option("--group", metavar="NAME=GLOB", help="A condition of several seeds (repeatable): mean ± std."),
    ] = None,
    groups_file: Annotated[
        Optional[Path], typer.Option("--groups", help="A TOML/JSON file naming conditions (see plot compare).")
    ] = None,
    interpolate_steps: Annotated[
        bool, typer.Option("--interpolate-steps", help="Interpolate seeds whose step grids differ.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help=plain('Print {"written": [path], "figures": n} on stdout.'))
    ] = False,
    quiet: QuietFlag = False,
):
    """Write one self-contained HTML report: summary tables, every figure kind, the most interesting matrices,
    comparisons across stores."""
    from specdyn import console
    from specdyn.errors import EXIT_USAGE, SpecdynError
    from specdyn.files import atomic_write, output_path
    from specdyn.plots.dispatch import open_stores
    from specdyn.report import build_report, count_figures

    named, out = out is not None, out or Path("report.html")  # a link at a path the user named is followed
    if out.suffix.lower() not in (".html", ".htm"):
        raise SpecdynError(f"{out}: the report is an HTML file; name it *.html", code=EXIT_USAGE)
    if dpi < 50:
        raise SpecdynError(f"--dpi {dpi}: too small for readable figures; use 80 or more", code=EXIT_USAGE)
    target = output_path(out, named, create=False)  # before any drawing: a bad path is one line at once
    opened = open_stores(stores or [])
    conditions = None
    if group or groups_file:
        from specdyn.plots.groups import conditions_from_args

        conditions = conditions_from_args(group, groups_file)
    done = 0
    with console.progress(transient=True, disable=quiet) as bar:
        task = bar.add_task("figures", total=count_figures(opened, conditions))

        def step(job):
            nonlocal done
            done += 1
            bar.advance(task)

        page = build_report(
            opened, title=title, dpi=dpi, on_figure=step, conditions=conditions, interpolate_steps=interpolate_steps
        )
    atomic_write(target, page, named=named)  # a killed run never leaves half a report
    if json_out:
        console.print_json({"written": [str(out)], "figures": done})
    else:
        console.info(f"wrote {out} ({done} figures, {out.stat().st_size / 2**20:.1f} MiB)")


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("report")(user_errors(report_command))
