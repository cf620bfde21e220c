"""`specdyn lottery RUN_DIR|STORE --density d`: lottery-ticket masks against the SVD, from weights alone."""

from pathlib import Path
from typing import Annotated

import typer

from specdyn.commands.common import JsonFlag, QuietFlag, cli_command
from specdyn.evals.options import LotteryOptions


def lottery_command(
    target: Annotated[Path, typer.Argument(help="An analyzed (dense) run dir or store.", show_default=False)],
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    *,
    opts: LotteryOptions,
):
    """Lottery-ticket masks against the SVD, from weights alone, into the store's evals/lottery.

    The global magnitude mask of docs/method.md (get_masks) and a random mask with the same per-layer densities; the singular vector agreement between SVD(W) and SVD(M⊙W) per matrix; with --masked runs, the agreement between masked and dense checkpoints over time.
    """
    from rich.table import Table

    from specdyn import console
    from specdyn.evals.lottery import lottery
    from specdyn.store import resolve_store

    s = lottery(resolve_store(target), opts, show_progress=not quiet)
    if json_out:
        console.print_json(s)
        return
    console.info(f"[green]✓[/green] {s['store']}: masks from step {s['step']} in {s['seconds']:.1f} s")
    table = Table(title="SVA score of SVD(W) vs SVD(M⊙W) (top-10 diagonal mean)", title_justify="left")
    table.add_column("matrix")
    for d in s["densities"]:
        for t in ("magnitude", "random"):
            table.add_column(f"d={d['density']:g} {t}", justify="right")
    for m in s["matrices"]:
        table.add_row(m, *[f"{d[t]['sva_score'][m]:.3f}" for d in s["densities"] for t in ("magnitude", "random")])
    console.show(table)
    for r in s["runs"]:
        scores = r["mean_sva_score"]
        console.info(
            f"masked run {r['run_dir']}: {len(scores)} checkpoints, mean SVA score vs dense "
            f"{scores[0]:.3f} (step {r['steps'][0]}) → {scores[-1]:.3f} (step {r['steps'][-1]})"
        )


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("lottery")(user_errors(cli_command(lottery_command, LotteryOptions)))
