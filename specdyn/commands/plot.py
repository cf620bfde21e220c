"""`specdyn plot KIND STORE [STORE ...] -o FILE`: one of the paper's figures from one or more stores."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.plots.registry import KINDS


def plot_command(
    kind: Annotated[str, typer.Argument(help=f"Figure kind: {', '.join(KINDS)}.", show_default=False)],
    stores: Annotated[
        list[Path], typer.Argument(help="Stores (or run dirs holding specdyn.zarr).", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file; png, svg or pdf by suffix.", show_default=False)
    ],
    dpi: Annotated[int, typer.Option("--dpi", help="Resolution of png output (and of heatmaps in svg/pdf).")] = 200,
    title: Annotated[Optional[str], typer.Option("--title", help="Figure title.")] = None,
    matrices: Annotated[
        Optional[list[str]],
        typer.Option("--matrices", help="Matrices shown (glob, full or short name; repeatable). Default: all."),
    ] = None,
    matrix: Annotated[
        Optional[list[str]],
        typer.Option(
            "--matrix",
            help="The matrix of single-matrix panels (sv: repeatable). Default: the first attention in-projection, else the middle matrix.",
        ),
    ] = None,
    pair: Annotated[
        Optional[str],
        typer.Option(
            "--pair",
            help="The pair of the alignment-diagonal panel. Default: embedding -> first attention, else the middle pair.",
        ),
    ] = None,
    pairs: Annotated[
        Optional[list[str]],
        typer.Option("--pairs", help="Pairs shown in alignment-score views (glob; repeatable). Default: all."),
    ] = None,
    metric: Annotated[
        Optional[list[str]],
        typer.Option(
            "--metric",
            help="Metric (repeatable): effective_rank, stable_rank, count90, stability_score, subspace_overlap, spectral_norm, ...; compare also takes train_loss, val_loss, train_err, val_err.",
        ),
    ] = None,
    steps: Annotated[
        Optional[str],
        typer.Option("--steps", help="Only checkpoints with step in a:b (inclusive; either side may be empty)."),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="x axis: `step` or `index` (checkpoint index, as the paper).")] = "step",
    log_x: Annotated[
        str, typer.Option("--log-x", help="Log step axis: auto (when steps span > 2 decades), on, off.")
    ] = "auto",
    top: Annotated[Optional[int], typer.Option("--top", help="Only the N largest singular values / ranks.")] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize", help="sv: divide by the largest singular value at each checkpoint.")
    ] = False,
    log_y: Annotated[bool, typer.Option("--log-y", help="Log y axis (sv, metrics, compare).")] = False,
    per_matrix: Annotated[
        bool, typer.Option("--per-matrix", help="compare: one panel per matrix instead of the mean.")
    ] = False,
    loss: Annotated[
        bool, typer.Option("--loss/--no-loss", help="metrics: the run's train/val loss on a right-hand axis.")
    ] = True,
    keep: Annotated[
        Optional[float], typer.Option("--keep", help="prune: the kept fraction to draw (of a --keep sweep).")
    ] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="interp: `train` or `val` curves.")] = None,
    curve: Annotated[
        Optional[str], typer.Option("--curve", help="interp: full, top_kept or bottom_kept model along the path.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help='Print {"written": [paths]} on stdout.')] = False,
):
    """Draw one figure kind from one or more stores (plots read only the store and the runs' run.json)."""
    from specdyn import console
    from specdyn.plots import style
    from specdyn.plots.dispatch import check_kind, make_figure, open_stores

    check_kind(kind)
    if dpi < 10:
        from specdyn.errors import SpecdynError

        raise SpecdynError(f"--dpi {dpi}: too small; use 72 or more (200 is print quality)")
    given = {
        "steps": steps,
        "title": title,
        "matrices": matrices,
        "matrix": matrix,
        "pair": pair,
        "pairs": pairs,
        "metric": metric,
        "top": top,
        "keep": keep,
        "split": split,
        "curve": curve,
    }
    given = {k: v for k, v in given.items() if v is not None}
    given.update({k: True for k, v in (("normalize", normalize), ("log_y", log_y), ("per_matrix", per_matrix)) if v})
    if not loss:
        given["loss"] = False
    if x != "step":
        given["x"] = x
    if log_x != "auto":
        given["log_x"] = log_x
    if out.suffix.lower() not in style.FORMATS:  # before any drawing
        from specdyn.errors import SpecdynError

        raise SpecdynError(f"{out}: unknown figure format {out.suffix or '(none)'!r}; use .png, .svg or .pdf")
    fig = make_figure(kind, open_stores(stores, kind), **given)
    path = style.save(fig, out, dpi)
    if json_out:
        console.print_json({"written": [str(path)]})
    else:
        console.info(f"wrote {path}")


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("plot")(user_errors(plot_command))
