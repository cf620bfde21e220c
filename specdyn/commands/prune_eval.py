"""`specdyn prune-eval RUN_DIR|STORE`: loss of low-rank pruned models over training (the paper's Fig. 4)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.errors import SpecdynError

TASK_HELP = (
    "Task that builds the model and data: a built-in name, path/to/file.py:object or package.module:object. "
    "Default: the task recorded in the checkpoints by `specdyn train`."
)
CONFIG_HELP = "Override a built-in task's config key (repeatable), e.g. --config data_frac=0.3."


def parse_fractions(values: list[str] | None, option: str, default: list[float]) -> list[float]:
    """Fractions from repeated and/or comma-separated option values (`--keep 0.1,0.25 --keep 0.5`)."""
    if not values:
        return list(default)
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                f = float(part)
            except ValueError:
                raise SpecdynError(f"{option} {part!r}: expected a number such as 0.5") from None
            if not 0.0 < f <= 1.0:
                raise SpecdynError(f"{option} {part}: must be in (0, 1]")
            out.append(f)
    return out


def prune_eval_command(
    target: Annotated[
        Path, typer.Argument(help="An analyzed run dir (holding specdyn.zarr) or a store.", show_default=False)
    ],
    keep: Annotated[
        Optional[list[str]],
        typer.Option(
            "--keep",
            help="Fraction f of singular directions the top variant keeps (ceil(f·k)); the bottom variant keeps the rest. Repeat or comma-separate for a sweep, e.g. --keep 0.1,0.25,0.5,0.75.",
            show_default="0.5",
        ),
    ] = None,
    task: Annotated[Optional[str], typer.Option("--task", help=TASK_HELP, show_default=False)] = None,
    config: Annotated[Optional[list[str]], typer.Option("--config", metavar="KEY=VALUE", help=CONFIG_HELP)] = None,
    bn_recal: Annotated[
        bool,
        typer.Option(
            "--bn-recal/--no-bn-recal",
            help="Re-estimate BatchNorm statistics on the train batches after pruning (docs/method.md 1.9).",
        ),
    ] = True,
    every: Annotated[
        Optional[int], typer.Option("--every", min=1, help="Every N-th analyzed checkpoint (and the last).")
    ] = None,
    steps: Annotated[
        Optional[str], typer.Option("--steps", help="Step range a:b, inclusive; either side may be empty.")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle", help="Allow arbitrary pickle in torch checkpoints (runs code: only for files you trust)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard earlier prune-eval results in the store first.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary (every curve) on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Loss of low-rank pruned models over training (the paper's Fig. 4), into the store's evals/prune.

    At each analyzed checkpoint: the full model, and every matrix but the final layer keeping its top ceil(f·k) singular directions, or the other k - ceil(f·k). Singular vectors come from the store when it holds enough of them (top-64 covers f·k <= 64), else from the checkpoint. Reruns compute only checkpoints and fractions not yet done.
    """
    from specdyn import console
    from specdyn.evals.prune import PruneOptions, prune_eval
    from specdyn.evals.taskload import parse_overrides
    from specdyn.store import resolve_store

    opts = PruneOptions(
        keep=parse_fractions(keep, "--keep", [0.5]),
        bn_recal=bn_recal,
        task=task,
        config=parse_overrides(config),
        every=every,
        steps=steps,
        trust_pickle=trust_pickle,
        overwrite=overwrite,
    )
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
    console.err_console().print(table)
    console.info(f"draw it: specdyn plot prune {s['store']} -o prune.png")


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("prune-eval")(user_errors(prune_eval_command))
