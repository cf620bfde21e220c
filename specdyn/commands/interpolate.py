"""`specdyn interpolate CKPT_A CKPT_B`: linear mode connectivity between checkpoints (one pair, a pairs file,
or all pairs of branches per split point)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.commands.prune_eval import CONFIG_HELP, TASK_HELP
from specdyn.errors import SpecdynError


def interpolate_command(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="CKPT_A CKPT_B; or, with --branches, branch run dirs.", show_default=False),
    ] = None,
    pairs_file: Annotated[
        Optional[Path],
        typer.Option(
            "--pairs",
            help="File of pairs, one `CKPT_A CKPT_B [SPLIT_STEP [LABEL]]` per line (paths relative to the file).",
        ),
    ] = None,
    branches: Annotated[
        bool,
        typer.Option(
            "--branches",
            help="PATHS are branch run dirs from `specdyn train --init-from`: pair every two branches of each split point (and perturbation) at their final checkpoints.",
        ),
    ] = False,
    at_step: Annotated[
        Optional[int],
        typer.Option(
            "--at-step", help="With --branches: compare the branches at this step instead of their last checkpoint."
        ),
    ] = None,
    points: Annotated[
        int, typer.Option("--points", min=2, help="Points on the alpha grid, both endpoints included.")
    ] = 11,
    keep: Annotated[
        float,
        typer.Option(
            "--keep",
            help="Fraction f of singular directions the top-kept variant keeps (ceil(f·k)); the bottom-kept keeps the rest.",
        ),
    ] = 0.5,
    task: Annotated[Optional[str], typer.Option("--task", help=TASK_HELP, show_default=False)] = None,
    config: Annotated[Optional[list[str]], typer.Option("--config", metavar="KEY=VALUE", help=CONFIG_HELP)] = None,
    bn_recal: Annotated[
        bool,
        typer.Option(
            "--bn-recal/--no-bn-recal", help="Re-estimate BatchNorm statistics at every alpha and after pruning."
        ),
    ] = True,
    sva_rank: Annotated[
        int, typer.Option("--sva-rank", min=1, help="Ranks of the endpoint SVA diagonal to store.")
    ] = 64,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Store for the results (evals/interp). Default: the trunk's analyzed store when all pairs branch from one trunk, else CKPT_A's run store, else CKPT_A's run dir/interp.zarr.",
            show_default=False,
        ),
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle", help="Allow arbitrary pickle in torch checkpoints (runs code: only for files you trust)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard earlier interpolation results in the output store first.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (every curve and barrier) on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Linear mode connectivity between checkpoints: loss barriers, pruned variants, effective ranks.

    On an even alpha grid: train and val metrics of the interpolated model as is, keeping the top ceil(f·k) singular directions of every matrix but the final layer, and keeping the rest; the effective rank of every matrix; the signed barrier of every curve; the SVA between the endpoints. Pairs already in the output store are skipped, so a batch resumes where it stopped.
    """
    from specdyn import console
    from specdyn.evals.interpolate import InterpOptions, Pair, branch_pairs, interpolate, read_pairs_file
    from specdyn.evals.taskload import parse_overrides

    paths = list(paths or [])
    if pairs_file is not None and (paths or branches):
        raise SpecdynError("--pairs takes the pairs from its file; pass no CKPT arguments and no --branches with it")
    if pairs_file is not None:
        pairs = read_pairs_file(pairs_file)
    elif branches:
        if len(paths) < 2:
            raise SpecdynError("--branches needs two or more branch run dirs")
        pairs = branch_pairs(paths, at_step)
    else:
        if at_step is not None:
            raise SpecdynError("--at-step applies to --branches only")
        if len(paths) != 2:
            raise SpecdynError(
                f"expected two checkpoints CKPT_A CKPT_B, got {len(paths)}; for many pairs use --pairs FILE or --branches"
            )
        for p in paths:
            if not p.exists():
                raise SpecdynError(f"{p}: no such checkpoint")
        pairs = [Pair(paths[0].resolve(), paths[1].resolve())]
    opts = InterpOptions(
        points=points,
        keep=keep,
        bn_recal=bn_recal,
        task=task,
        config=parse_overrides(config),
        sva_rank=sva_rank,
        trust_pickle=trust_pickle,
        overwrite=overwrite,
    )
    summary = interpolate(pairs, out, opts, show_progress=not quiet)
    if json_out:
        console.print_json(summary)
        return
    print_summary(summary)


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
    console.err_console().print(table)
    console.info(f"draw it: specdyn plot interp {s['store']} -o interp.png")


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("interpolate")(user_errors(interpolate_command))
