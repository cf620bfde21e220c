"""`specdyn lottery RUN_DIR|STORE --density d`: lottery-ticket masks against the SVD, from weights alone."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.commands.prune_eval import parse_fractions


def lottery_command(
    target: Annotated[Path, typer.Argument(help="An analyzed (dense) run dir or store.", show_default=False)],
    density: Annotated[
        Optional[list[str]],
        typer.Option(
            "--density",
            "-d",
            help="Fraction of weights the mask keeps; repeat or comma-separate for several.",
            show_default="0.05",
        ),
    ] = None,
    step: Annotated[
        Optional[int],
        typer.Option(
            "--step",
            help="Checkpoint the masks come from (default: the last analyzed, as the paper).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline mask.")] = 0,
    sva_rank: Annotated[
        int,
        typer.Option(
            "--sva-rank", min=1, help="Ranks of SVA(SVD(W), SVD(M⊙W)) kept per matrix (the paper crops to 100)."
        ),
    ] = 100,
    masked: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--masked",
            help="A masked run dir from `specdyn train --mask-from` (repeatable): SVA against the dense run over time.",
        ),
    ] = None,
    zip_by: Annotated[
        str, typer.Option("--zip", help="Pair masked and dense checkpoints by equal 'step' or by 'index' (position).")
    ] = "step",
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle", help="Allow arbitrary pickle in torch checkpoints (runs code: only for files you trust)."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Lottery-ticket masks against the SVD, from weights alone, into the store's evals/lottery.

    The global magnitude mask of docs/method.md (get_masks) and a random mask with the same per-layer densities; the singular vector agreement between SVD(W) and SVD(M⊙W) per matrix; with --masked runs, the agreement between masked and dense checkpoints over time.
    """
    from rich.table import Table

    from specdyn import console
    from specdyn.evals.lottery import LotteryOptions, lottery
    from specdyn.store import resolve_store

    opts = LotteryOptions(
        densities=parse_fractions(density, "--density", [0.05]),
        step=step,
        seed=seed,
        sva_rank=sva_rank,
        masked=list(masked or []),
        zip=zip_by,
        trust_pickle=trust_pickle,
    )
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
    console.err_console().print(table)
    for r in s["runs"]:
        scores = r["mean_sva_score"]
        console.info(
            f"masked run {r['run_dir']}: {len(scores)} checkpoints, mean SVA score vs dense "
            f"{scores[0]:.3f} (step {r['steps'][0]}) → {scores[-1]:.3f} (step {r['steps'][-1]})"
        )


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("lottery")(user_errors(lottery_command))
