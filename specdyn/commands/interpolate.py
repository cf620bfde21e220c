"""`specdyn interpolate CKPT_A CKPT_B`: linear mode connectivity between checkpoints (one pair, a pairs file,
or all pairs of branches per split point)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.commands.common import JsonFlag, QuietFlag, cli_command, deprecated, plain
from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.evals.options import InterpOptions


def interpolate_command(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="CKPT_A CKPT_B; or, with --branches, branch run dirs.", show_default=False),
    ] = None,
    pairs_file: Annotated[
        Optional[Path],
        typer.Option(
            "--checkpoint-pairs",
            metavar="FILE",
            help=plain(
                "File of pairs, one `CKPT_A CKPT_B [SPLIT_STEP [LABEL]]` per line (paths relative to the file)."
            ),
        ),
    ] = None,
    pairs_old: Annotated[Optional[Path], typer.Option("--pairs", hidden=True)] = None,
    branches: Annotated[
        bool,
        typer.Option(
            "--branches",
            help="PATHS are branch run dirs from `specdyn train --init-from`: pair every two branches of each split "
            "point (and perturbation) at their final checkpoints.",
        ),
    ] = False,
    at_step: Annotated[
        Optional[int],
        typer.Option(
            "--at-step", help="With --branches: compare the branches at this step instead of their last checkpoint."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Store for the results (evals/interp). Default: the trunk's analyzed store when all pairs branch "
            "from one trunk, else CKPT_A's run store, else CKPT_A's run dir/interp.zarr.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    *,
    opts: InterpOptions,
):
    """Linear mode connectivity between checkpoints: loss barriers, pruned variants, effective ranks.

    On an even alpha grid: train and val metrics of the interpolated model as is, keeping the top ceil(f·k) singular directions of every matrix but the final layer, and keeping the rest; the effective rank of every matrix; the signed barrier of every curve; the SVA between the endpoints. Pairs already in the output store are skipped, so a batch resumes where it stopped.
    """
    from specdyn import console
    from specdyn.evals.interpolate import interpolate

    if pairs_old is not None:
        deprecated("--pairs", "--checkpoint-pairs")
        pairs_file = pairs_file or pairs_old
    pairs = _pairs(list(paths or []), pairs_file, branches, at_step)
    summary = interpolate(pairs, out, opts, show_progress=not quiet)
    if json_out:
        console.print_json(summary)
        return
    print_summary(summary)


def _pairs(paths: list[Path], pairs_file: Path | None, branches: bool, at_step: int | None):
    """The checkpoint pairs to interpolate: from a file, from branch run dirs, or the two paths given."""
    from specdyn.evals.interpolate import Pair, branch_pairs, read_checkpoint_pairs

    if pairs_file is not None and (paths or branches):
        raise SpecdynError(
            "--checkpoint-pairs takes the pairs from its file; pass no CKPT arguments and no --branches with it",
            code=EXIT_USAGE,
        )
    if pairs_file is not None:
        return read_checkpoint_pairs(pairs_file)
    if branches:
        if len(paths) < 2:
            raise SpecdynError("--branches needs two or more branch run dirs", code=EXIT_USAGE)
        return branch_pairs(paths, at_step)
    if at_step is not None:
        raise SpecdynError("--at-step applies to --branches only", code=EXIT_USAGE)
    if len(paths) != 2:
        raise SpecdynError(
            f"expected two checkpoints CKPT_A CKPT_B, got {len(paths)}; for many pairs use --checkpoint-pairs FILE or "
            "--branches",
            code=EXIT_USAGE,
        )
    for p in paths:
        if not p.exists():
            raise SpecdynError(f"{p}: no such checkpoint")
    return [Pair(paths[0].resolve(), paths[1].resolve())]


def print_summary(s: dict) -> None:
    from rich.table import Table

    from specdyn import console

    console.info(f"[green]✓[/green] {s['store']}: {s['pairs']} pairs ({s['computed']} new) in {s['seconds']:.1f} s")
    if not s.get("pairs"):
        return
    table = Table(title="train-loss barrier (signed; mean ± std over pairs)", title_justify="left")
    for col in ("split step", "pairs", "full", "top kept", "bottom kept"):
        table.add_column(col, justify="left" if col == "split step" else "right")
    for g in s["barrier_by_split"]:
        name = g["label"] or (str(g["split_step"]) if g["split_step"] >= 0 else "—")

        def cell(c, g=g):
            v = g[f"{c}_train_loss_barrier"]
            return f"{v['mean']:.4g} ± {v['std']:.2g}" if v["pairs"] > 1 else f"{v['mean']:.4g}"

        table.add_row(
            name, str(g["full_train_loss_barrier"]["pairs"]), cell("full"), cell("top_kept"), cell("bottom_kept")
        )
    console.show(table)
    console.info(f"draw it: specdyn plot interp {s['store']} -o interp.png")


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("interpolate")(user_errors(cli_command(interpolate_command, InterpOptions)))
