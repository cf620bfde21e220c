"""`specdyn analyze RUN_DIR [RUN_DIR ...]`: compute the SVDs of a checkpoint series once, into a zarr store."""

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.errors import SpecdynError


def analyze_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories holding checkpoint series.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Store path (default: RUN_DIR/specdyn.zarr). With several run dirs, --out merges them into one series by step.")] = None,
    topk: Annotated[int, typer.Option("--topk", min=1, help="Singular vectors kept per matrix (stability, alignment, pruning).")] = 64,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Only tensors matching this glob (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Skip tensors matching this glob (repeatable).")] = None,
    every: Annotated[Optional[int], typer.Option("--every", min=1, help="Every N-th checkpoint (and the last).")] = None,
    log_spaced: Annotated[Optional[int], typer.Option("--log-spaced", min=2, help="About N checkpoints spaced evenly in log(index).")] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", help="Step range a:b, inclusive; either side may be empty.")] = None,
    order: Annotated[str, typer.Option("--order", help="Order checkpoints by training 'step' or natural 'name'.")] = "step",
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="File of alignment pairs, one `prev next` per line.")] = None,
    heads: Annotated[Optional[int], typer.Option("--heads", min=1, help="Attention heads (default: from checkpoint config).")] = None,
    device: Annotated[str, typer.Option("--device", help="'cpu' or 'cuda' (GPU SVDs).")] = "cpu",
    svd_route: Annotated[str, typer.Option("--svd-route", help="'auto' (fastest measured per shape), or pin 'gram', 'gram_torch', 'lapack'.")] = "auto",
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="Measure the SVD routes again on this machine (choices are cached in ~/.cache/specdyn).")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes over checkpoints; BLAS threads = cores / workers.")] = 1,
    dask: Annotated[Optional[str], typer.Option("--dask", help="Run checkpoints on Dask: 'local' (a LocalCluster of --workers processes) or a scheduler address. Needs specdyn[dask].")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on an unreadable checkpoint instead of skipping it.")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow arbitrary pickle in torch checkpoints (runs code: only for files you trust).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete an existing store first.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep polling for new checkpoints until interrupted.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls with --watch.")] = 30.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Analyze checkpoint series: one SVD per weight matrix per checkpoint, every spectral measurement, one store.

    Reruns only compute new checkpoints; a killed run resumes where it stopped.
    """
    from specdyn import console
    from specdyn.analyze import AnalyzeOptions, analyze

    if order not in ("step", "name"):
        raise SpecdynError(f"--order {order!r}: use 'step' or 'name'")
    from specdyn.spectral.svd import ROUTES

    if svd_route not in ("auto", *ROUTES):
        raise SpecdynError(f"--svd-route {svd_route!r}: use auto, {', '.join(ROUTES)}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SpecdynError(f"--device {device}: no CUDA device is available here; use --device cpu")
    elif device != "cpu":
        raise SpecdynError(f"--device {device!r}: use 'cpu' or 'cuda'")
    opts = AnalyzeOptions(
        top=topk, include=include or [], exclude=exclude or [], every=every, log_spaced=log_spaced, steps=steps,
        order=order, pairs_file=str(pairs) if pairs else None, heads=heads, device=device, svd_route=svd_route, recalibrate=recalibrate, workers=workers, dask=dask,
        strict=strict, trust_pickle=trust_pickle, overwrite=overwrite,
    )
    # Several run dirs without --out: one store each (batch use); with --out: one merged series.
    jobs = [(run_dirs, out)] if out or len(run_dirs) == 1 else [([d], None) for d in run_dirs]
    summaries = []
    try:
        while True:
            summaries = [analyze(dirs, store, opts, show_progress=not quiet) for dirs, store in jobs]
            for s in summaries:
                console.info(
                    f"[green]✓[/green] {s['store']}: {s['checkpoints']} checkpoints "
                    f"({s['computed']} new), {s['matrices']} matrices, {s['pairs']} pairs, {s['seconds']:.1f} s"
                    + (f", [yellow]{len(s['skipped'])} skipped[/yellow]" if s["skipped"] else "")
                )
            if not watch:
                break
            opts.overwrite = False
            time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise
    if json_out:
        console.print_json(summaries[0] if len(summaries) == 1 else summaries)


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("analyze")(user_errors(analyze_command))
