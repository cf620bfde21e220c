"""`specdyn export STORE --format csv|parquet [--step S]`: a WeightWatcher-like per-layer table of one checkpoint,
to compare with WeightWatcher's `analyze()` DataFrame (same column names where the quantity is the same)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

# specdyn's own metrics added after WeightWatcher's columns.
SPECDYN_COLUMNS = ("effective_rank", "stable_rank", "count90", "gini", "stability_score")


def layer_table(st, step: int | None = None) -> list[dict]:
    """One dict per matrix at `step` (default the last completed checkpoint): WW's columns (layer_id, name, N, M,
    alpha, alpha_weighted, log_alpha_norm, log_norm, log_spectral_norm, entropy, matrix_rank, num_pl_spikes,
    xmin, D, lambda_max, norm, spectral_norm, sv_max) and specdyn's (kind, shape, effective_rank, ...)."""
    import math

    import numpy as np

    from specdyn.errors import SpecdynError
    from specdyn.spectral.heavy_tail import HEAVY_TAIL_METRICS, WW_COLUMNS

    steps = st.steps
    if len(steps) == 0:
        raise SpecdynError(f"{st.path}: no completed checkpoints yet; run `specdyn analyze` on its run dir")
    if step is None:
        i = len(steps) - 1
    else:
        hit = np.flatnonzero(steps == step)
        if not len(hit):
            raise SpecdynError(
                f"{st.path}: no checkpoint at step {step}; it has steps {steps[0]}..{steps[-1]} ({len(steps)})"
            )
        i = int(hit[-1])
    values = {name: st.metric(name)[i] for name in (*HEAVY_TAIL_METRICS, *SPECDYN_COLUMNS)}
    num = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    rows = []
    for j, name in enumerate(st.matrices):
        spec = st.matrix_spec(name)
        s = st.sv(name)[i]
        lam_max = float(s[0] ** 2) if len(s) else math.nan
        row = {"step": int(steps[i]), "layer_id": j, "name": name, "kind": spec.kind,
               "shape": "x".join(map(str, spec.original_shape)), "N": max(spec.shape), "M": min(spec.shape)}  # fmt: skip
        for m in HEAVY_TAIL_METRICS:
            v = float(values[m][j])
            row[WW_COLUMNS.get(m, m)] = int(v) if m in ("matrix_rank", "num_pl_spikes") and not math.isnan(v) else v
        row.update(
            lambda_max=lam_max,
            norm=float(np.sum(s**2)),
            spectral_norm=lam_max,
            sv_max=float(s[0]) if len(s) else math.nan,
        )
        row.update({m: float(values[m][j]) for m in SPECDYN_COLUMNS})
        rows.append({k: num(v) for k, v in row.items()})
    return rows


def write_table(rows: list[dict], out: Path, fmt: str) -> Path:
    """Write rows as csv (stdlib) or parquet (pyarrow, optional)."""
    from specdyn.errors import SpecdynError

    out = Path(out)
    if fmt == "csv":
        import csv

        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
            w.writeheader()
            w.writerows(rows)
        return out
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SpecdynError(
            "--format parquet needs pyarrow: pip install 'specdyn[parquet]' (or pip install pyarrow)"
        ) from None
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out


def export_command(
    store: Annotated[
        Path, typer.Argument(help="A specdyn store (or a run dir holding specdyn.zarr).", show_default=False)
    ],
    format_: Annotated[str, typer.Option("--format", help="csv or parquet (parquet needs pyarrow).")] = "csv",
    step: Annotated[Optional[int], typer.Option("--step", help="The checkpoint's step (default: the last).")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", help="Output file (default: STORE's run dir/specdyn-step<S>.<format>; - for csv on stdout)."
        ),
    ] = None,
):
    """Write a WeightWatcher-like per-layer table (alpha, log norms, entropy, ... and specdyn's metrics) of one step."""
    import sys

    from specdyn import console, open_store
    from specdyn.errors import EXIT_USAGE, SpecdynError

    if format_ not in ("csv", "parquet"):
        raise SpecdynError(f"--format {format_}: use csv or parquet", code=EXIT_USAGE)
    st = open_store(store)
    rows = layer_table(st, step)
    if out is not None and str(out) == "-":
        if format_ != "csv":
            raise SpecdynError("-o -: only csv goes to stdout; give a file for parquet", code=EXIT_USAGE)
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        return
    if out is None:
        out = st.path.parent / f"specdyn-step{rows[0]['step'] if rows else 0}.{format_}"
    path = write_table(rows, out, format_)
    console.info(f"wrote {len(rows)} layers at step {rows[0]['step'] if rows else '-'} to {path}")


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("export")(user_errors(export_command))
