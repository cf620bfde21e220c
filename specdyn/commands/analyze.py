"""`specdyn analyze RUN_DIR [RUN_DIR ...]`: compute the SVDs of a checkpoint series once, into a zarr store."""

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.analyze.options import AnalyzeOptions
from specdyn.commands.common import JsonFlag, QuietFlag, cli_command

WATCH_SETTLE = 2.0  # seconds a checkpoint's files must be unmodified before --watch reads them


def analyze_command(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories holding checkpoint series.", show_default=False)
    ],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Store path (default: RUN_DIR/specdyn.zarr). With several run dirs, --out merges them into one series by step.",
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep polling for new checkpoints until interrupted.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls with --watch.")] = 30.0,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    *,
    opts: AnalyzeOptions,
):
    """Analyze checkpoint series: one SVD per weight matrix per checkpoint, every spectral measurement, one store.

    Reruns only compute new checkpoints; a killed run resumes where it stopped.
    """
    from specdyn import console

    # Several run dirs without --out: one store each (batch use); with --out: one merged series.
    if watch and opts.settle is None:  # a file that training is still writing must not be read
        opts = opts.replace(settle=WATCH_SETTLE)
    jobs = [(run_dirs, out)] if out or len(run_dirs) == 1 else [([d], None) for d in run_dirs]
    summaries = []
    try:
        while True:
            summaries = [s for dirs, store in jobs if (s := _poll(dirs, store, opts, quiet, watch))]
            for s in summaries:
                console.info(
                    f"[green]✓[/green] {s['store']}: {s['checkpoints']} checkpoints "
                    f"({s['computed']} new), {s['matrices']} matrices, {s['pairs']} pairs, {s['seconds']:.1f} s"
                    + (f", [yellow]{len(s['skipped'])} skipped[/yellow]" if s["skipped"] else "")
                )
            if not watch:
                break
            opts = opts.replace(overwrite=False)  # a poll after the first never deletes what it just wrote
            time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise
    if json_out:
        console.print_json(summaries[0] if len(summaries) == 1 else summaries)


def _poll(dirs, store, opts, quiet: bool, watch: bool) -> dict | None:
    """One analyze; under --watch, a series whose checkpoints are all still being written waits (None)."""
    from specdyn.analyze import analyze
    from specdyn.analyze.plan import NothingReady

    try:
        return analyze(dirs, store, opts, show_progress=not quiet)
    except NothingReady:
        if not watch:
            raise
        return None


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("analyze")(user_errors(cli_command(analyze_command, AnalyzeOptions)))
