"""`specdyn prune-eval RUN_DIR|STORE`: loss of low-rank pruned models over training (the paper's Fig. 4)."""

from pathlib import Path
from typing import Annotated

import typer

from specdyn.commands.common import JsonFlag, QuietFlag, cli_command
from specdyn.evals.options import PruneOptions


def prune_eval_command(
    target: Annotated[
        Path, typer.Argument(help="An analyzed run dir (holding specdyn.zarr) or a store.", show_default=False)
    ],
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    *,
    opts: PruneOptions,
):
    """Loss of low-rank pruned models over training (the paper's Fig. 4), into the store's evals/prune.

    At each analyzed checkpoint: the full model, and every matrix but the final layer keeping its top ceil(f·k) singular directions, or the other k - ceil(f·k). Singular vectors come from the store when it holds enough of them (top-64 covers f·k <= 64), else from the checkpoint. Reruns compute only checkpoints and fractions not yet done.
    """
    from specdyn import console
    from specdyn.evals.prune import prune_eval
    from specdyn.store import resolve_store

    summary = prune_eval(resolve_store(target), opts, show_progress=not quiet)
    if json_out:
        console.print_json(summary)
        return
    print_summary(summary)


def print_summary(s: dict) -> None:
    from rich.table import Table

    from specdyn import console

    svd = s["svd"]
    console.info(
        f"[green]✓[/green] {s['store']}: prune-eval on {s['checkpoints']} checkpoints ({s['computed']} new) in "
        f"{s['seconds']:.1f} s; SVDs from the store {svd['store']}, from checkpoints {svd['checkpoint']}"
    )
    if not s.get("steps"):
        return
    table = Table(title=f"step {s['steps'][-1]} (last checkpoint)", title_justify="left")
    table.add_column("model")
    for split in ("train", "val"):
        for m in s["metrics"]:
            table.add_column(f"{split} {m}", justify="right")

    def cells(curves):
        return [f"{curves[sp][m][-1]:.4g}" for sp in ("train", "val") for m in s["metrics"]]

    table.add_row("full", *cells(s["full"]))
    for f in s["keep"]:
        table.add_row(f"top {f:g} kept", *cells(s["top_kept"][str(f)]))
        table.add_row(f"bottom {1 - f:g} kept", *cells(s["bottom_kept"][str(f)]))
    console.show(table)
    console.info(f"draw it: specdyn plot prune {s['store']} -o prune.png")


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("prune-eval")(user_errors(cli_command(prune_eval_command, PruneOptions)))
