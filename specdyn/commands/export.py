"""`specdyn export STORE --format csv|parquet [--step S]`: a WeightWatcher-like per-layer table of every completed
checkpoint (long: one row per checkpoint and matrix), to compare with WeightWatcher's `analyze()` DataFrame (same
column names where the quantity is the same)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from specdyn.commands.common import JsonFlag, QuietFlag

# WeightWatcher's integer columns (its DataFrame holds them as ints).
INTEGER_COLUMNS = ("matrix_rank", "num_pl_spikes")


def layer_table(st, step: int | None = None) -> list[dict]:
    """One dict per matrix at `step` (default the last completed checkpoint): WW's columns (layer_id, name, N, M,
    alpha, alpha_weighted, log_alpha_norm, log_norm, log_spectral_norm, entropy, matrix_rank, num_pl_spikes,
    xmin, D, lambda_max, norm, spectral_norm, sv_max) and specdyn's (kind, shape, effective_rank, ...)."""
    return layer_rows(st, [_step_index(st, step)])


def _step_index(st, step: int | None) -> int:
    import numpy as np

    from specdyn.errors import SpecdynError

    steps = st.steps
    if len(steps) == 0:
        raise SpecdynError(f"{st.path}: no completed checkpoints yet; run `specdyn analyze` on its run dir")
    if step is None:
        return len(steps) - 1
    hit = np.flatnonzero(steps == step)
    if not len(hit):
        raise SpecdynError(
            f"{st.path}: no checkpoint at step {step}; it has steps {steps[0]}..{steps[-1]} ({len(steps)})"
        )
    return int(hit[-1])


def layer_rows(st, indices) -> list[dict]:
    """The per-layer table of several completed checkpoints (indices into `st.steps`), long: one row per
    (checkpoint, matrix), checkpoints in order."""
    import math

    import numpy as np

    from specdyn.spectral.heavy_tail import HEAVY_TAIL_METRICS, WW_COLUMNS
    from specdyn.store.frames import store_metrics

    steps = st.steps
    # every declared metric: WeightWatcher's (heavy-tail) columns first under WW's names, then specdyn's own
    own = [m for m in store_metrics(st) if m not in HEAVY_TAIL_METRICS]
    values = {name: st.metric(name) for name in (*HEAVY_TAIL_METRICS, *own)}
    intruders = st.intruders() if st.has_base else None
    num = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    specs = [st.matrix_spec(name) for name in st.matrices]
    svs = [st.sv(name) for name in st.matrices]
    rows = []
    for i in indices:
        for j, (name, spec, sv) in enumerate(zip(st.matrices, specs, svs)):
            s = sv[i]
            lam_max = float(s[0] ** 2) if len(s) else math.nan
            row = {"step": int(steps[i]), "layer_id": j, "name": name, "kind": spec.kind,
                   "shape": "x".join(map(str, spec.original_shape)), "N": max(spec.shape), "M": min(spec.shape)}  # fmt: skip
            for m in HEAVY_TAIL_METRICS:
                v = float(values[m][i, j])
                row[WW_COLUMNS.get(m, m)] = int(v) if m in INTEGER_COLUMNS and not math.isnan(v) else v
            row.update(
                lambda_max=lam_max,
                norm=float(np.sum(s**2)),
                spectral_norm=lam_max,
                sv_max=float(s[0]) if len(s) else math.nan,
            )
            row.update({m: float(values[m][i, j]) for m in own if m not in row})
            if intruders is not None:
                row.update({f"intruders_eps{e:g}": float(intruders[i, j, k]) for k, e in enumerate(st.epsilons)})
            rows.append({k: num(v) for k, v in row.items()})
    return rows


def write_table(rows: list[dict], out: Path, fmt: str, named: bool = True) -> Path:
    """Write rows as csv (stdlib) or parquet (pyarrow, optional), atomically; a link at `out` is followed only
    where the user `named` it (specdyn.files)."""
    from specdyn.errors import SpecdynError
    from specdyn.files import atomic_open

    out = Path(out)
    if fmt == "csv":
        import csv

        with atomic_open(out, "w", named=named, newline="", encoding="utf-8") as f:
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
    with atomic_open(out, "wb", named=named) as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    return out


def export_command(
    store: Annotated[
        Path, typer.Argument(help="A specdyn store (or a run dir holding specdyn.zarr).", show_default=False)
    ],
    format_: Annotated[str, typer.Option("--format", help="csv or parquet (parquet needs pyarrow).")] = "csv",
    step: Annotated[
        Optional[list[int]],
        typer.Option("--step", help="Only this checkpoint's step (repeatable). Default: every completed checkpoint."),
    ] = None,
    steps: Annotated[
        Optional[str], typer.Option("--steps", help="Only checkpoints with step in a:b (inclusive).")
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Output file (default: STORE's run dir/specdyn-layers.<format>, or specdyn-step<S>.<format> for one "
            "--step; - for csv on stdout).",
        ),
    ] = None,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
):
    """Write a WeightWatcher-like per-layer table (alpha, log norms, entropy, ... and specdyn's metrics), one row
    per (checkpoint, matrix): every completed checkpoint, or those --step/--steps select."""
    import sys

    from specdyn import console, open_store
    from specdyn.errors import EXIT_USAGE, SpecdynError
    from specdyn.selection import parse_steps

    if format_ not in ("csv", "parquet"):
        raise SpecdynError(f"--format {format_}: use csv or parquet", code=EXIT_USAGE)
    st = open_store(store)
    _step_index(st, None)  # a store without completed checkpoints: the one-line "run analyze"
    indices = [_step_index(st, s) for s in step] if step else list(range(len(st)))
    if steps:
        lo, hi = parse_steps(steps)
        indices = [i for i in indices if (lo is None or st.steps[i] >= lo) and (hi is None or st.steps[i] <= hi)]
        if not indices:
            raise SpecdynError(
                f"{st.path}: no checkpoint with step in {steps}; it has steps {st.steps[0]}..{st.steps[-1]}"
            )
    rows = layer_rows(st, indices)
    if out is not None and str(out) == "-":
        if format_ != "csv":
            raise SpecdynError("-o -: only csv goes to stdout; give a file for parquet", code=EXIT_USAGE)
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        return
    named = out is not None  # a link at the default path is refused, one the user named is followed
    if out is None:
        name = f"specdyn-step{rows[0]['step']}" if step and len(step) == 1 else "specdyn-layers"
        out = st.path.parent / f"{name}.{format_}"
    path = write_table(rows, out, format_, named)
    written = sorted({r["step"] for r in rows})
    if json_out:
        console.print_json({"written": [str(path)], "rows": len(rows), "steps": written})
    elif not quiet:
        console.info(f"wrote {len(rows)} rows ({len(written)} checkpoints × {len(st.matrices)} matrices) to {path}")


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("export")(user_errors(export_command))
