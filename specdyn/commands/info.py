"""`specdyn info STORE`: what a store holds (sources, checkpoints, matrices, latest metrics)."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from specdyn.commands.common import JsonFlag, QuietFlag
from specdyn.files import name_text

# The table's columns (--json holds every declared metric). At the last checkpoint `stability_score` (against the
# final checkpoint) is 1 by definition, so the table shows the stability against the previous checkpoint instead.
TABLE = {"effective_rank": "eff. rank", "stable_rank": "stable rank", "spectral_norm": "‖W‖₂",
         "stability_prev_score": "stability vs prev."}  # fmt: skip


def store_summary(st, step: int | None = None) -> dict:
    """A JSON-able summary of a store: the `--json` document of `specdyn info`; its "layers" are the
    WeightWatcher-like per-layer table of `step` (default the last; `specdyn export` writes the same)."""
    import numpy as np

    last = {}
    at = None
    if len(st):
        from specdyn.commands.export import _step_index
        from specdyn.store.frames import store_metrics  # every declared metric (spectral/metrics.py)

        i = _step_index(st, step)
        at = int(st.steps[i])
        for name in store_metrics(st):
            last[name] = st.metric(name)[i]
    matrices = []
    for j, name in enumerate(st.matrices):
        spec = st.matrix_spec(name)
        row = {
            "name": name,
            "kind": spec.kind,
            "orientation": spec.orientation,
            "shape": list(spec.shape),
            "original_shape": list(spec.original_shape),
        }
        if spec.fused:
            row["fused"] = {"layout": spec.fused[0], "heads": spec.fused[1], "kv_heads": spec.fused[2]}
        if spec.expert is not None:
            row["expert"] = spec.expert
        if spec.cut is not None:
            row["cut_from"] = spec.cut.tensor
        row.update({k: (None if np.isnan(v[j]) else float(v[j])) for k, v in last.items()})
        matrices.append(row)
    steps = st.steps
    return {
        "store": name_text(str(st.path)),  # a folder name that is not UTF-8 as \xHH, as stored checkpoints are
        "schema_version": st.attrs.get("schema_version"),
        "specdyn_version": st.attrs.get("specdyn_version"),
        "sources": [name_text(str(d)) for d in st.run_dirs],
        "checkpoints": len(st),
        "steps": [int(s) for s in steps],
        "step": at,  # the checkpoint whose metrics `matrices` and `layers` hold
        "rows": [
            {"step": int(step), "checkpoint": ck, "revision": rev, "repo": st.sources[int(src)].get("repo")}
            for step, ck, rev, src in zip(steps, st.checkpoints, st.revisions, st.source_index)
        ],
        "skipped": st.attrs.get("skipped", []),
        "skipped_tensors": st.attrs.get("skipped_tensors", []),
        "options": st.attrs.get("options", {}),
        "heads": st.attrs.get("heads"),
        "kv_heads": st.attrs.get("kv_heads"),
        "structure": st.attrs.get("structure", "not recorded (a store made before specdyn recorded it)"),
        "architecture": st.attrs.get("architecture"),
        "tied": st.attrs.get("tied", {}),
        "refused": st.attrs.get("refused", {}),
        "top": st.top,
        "matrices": matrices,
        "pairs": st.pairs,
        "svd_routes": st.attrs.get("svd_routes", {}),
        "svd_route_cache": _route_cache(st),
        "updated": st.attrs.get("updated"),
        "layers": _layers(st, step),
    }


def _route_cache(st) -> dict:
    """This machine's route cache for the store's shapes: where it is, and each shape's route and its age."""
    from specdyn.spectral.svd import cached_routes, route_cache_path

    shapes = sorted({tuple(st.matrix_spec(name).shape) for name in st.matrices})
    return {"path": str(route_cache_path()), "routes": cached_routes(shapes, st.top)}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _layers(st, step: int | None) -> list[dict]:
    from specdyn.commands.export import layer_table

    return layer_table(st, step) if len(st) else []


def warn_missing_chunks(st) -> None:
    """A chunk file of a done row deleted since would read as NaN here: say which, and what to do."""
    from specdyn import console
    from specdyn.store import damage

    with damage.reading(st.path, "spectral_norm"):  # the one array it reads besides the listings
        lost = damage.missing_chunks(st.root, st.root["done"][:])
    if lost:
        console.warn(f"{st.path}: chunks of done rows are missing: {damage.describe(lost)}; {damage.REPAIR}")


def info_command(
    store: Annotated[
        Path, typer.Argument(help="A specdyn store (or a run dir holding specdyn.zarr).", show_default=False)
    ],
    json_out: JsonFlag = False,
    step: Annotated[
        int | None, typer.Option("--step", help="The checkpoint whose metrics are shown (default: the last).")
    ] = None,
    quiet: QuietFlag = False,
):
    """Summarize a store: sources, checkpoints, matrices with shapes, latest metrics."""
    from rich.console import Console
    from rich.table import Table

    from specdyn import console, open_store
    from specdyn.store import resolve_store

    st = open_store(resolve_store(store))
    summary = store_summary(st, step)
    warn_missing_chunks(st)
    if json_out:
        console.print_json(summary)
        return
    out = Console() if sys.stdout.isatty() else Console(width=160)  # piped: names whole, one line per matrix
    steps = summary["steps"]
    out.print(
        f"[bold]{summary['store']}[/bold]  (schema {summary['schema_version']}, specdyn {summary['specdyn_version']})"
    )
    for src in summary["sources"]:
        out.print(f"  source  {src}")
    span = f"steps {steps[0]} .. {steps[-1]}" if steps else "no completed checkpoints yet"
    out.print(
        f"  {summary['checkpoints']} checkpoints, {span}; top-{summary['top']} vectors; heads: {summary['heads']}"
    )
    for r in summary["rows"]:  # a hub series: which revision each row is (its folder is only a commit hash)
        if r["revision"] is not None:
            out.print(f"  step {r['step']:>8}  {r['repo']}@{r['revision']}  ({r['checkpoint'][:22]})")
    out.print(
        f"  structure: {summary['structure']}"
        + (f"; architecture {summary['architecture']}" if summary["architecture"] else "")
    )
    if summary["kv_heads"] and summary["kv_heads"] != summary["heads"]:
        out.print(f"  key/value heads: {summary['kv_heads']} (grouped-query attention)")
    for alias, name in summary["tied"].items():
        out.print(f"  tied  {alias} = {name} (analyzed once)")
    for name, why in summary["refused"].items():
        out.print(f"  [yellow]not analyzed[/yellow] {name}: {why}")
    for s in summary["skipped"]:
        out.print(f"  [yellow]skipped[/yellow] {s['checkpoint']}: {s['reason']}", markup=True, highlight=False)
    for t in summary["skipped_tensors"]:
        out.print(f"  not analyzed (not floating point): {t['name']} {t['dtype']} {'×'.join(map(str, t['shape']))}")
    last = summary["step"] == (steps[-1] if steps else None)
    title = f"matrices at step {summary['step']}" + (" (the last checkpoint)" if last else "")
    table = Table(title=title, title_justify="left")
    table.add_column("matrix", overflow="fold", ratio=3)
    table.add_column("kind", overflow="fold", ratio=1)
    table.add_column("rows", no_wrap=True)
    for col in ("shape", *TABLE.values()):
        table.add_column(col, justify="right", no_wrap=True)
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for m in summary["matrices"]:
        table.add_row(
            m["name"],
            m["kind"] + (f" ({m['fused']['layout']})" if m.get("fused") else ""),
            "out" if m["orientation"] == "rows=outputs" else "out (T)",
            "×".join(map(str, m["original_shape"])),
            *(fmt(m.get(name)) for name in TABLE),
        )
    out.print(table)
    if any(m["orientation"] != "rows=outputs" for m in summary["matrices"]):
        out.print("  rows: out = rows are outputs, as stored; out (T) = transposed (Conv1D), stored in×out")
    _print_routes(out, summary)
    out.print(
        f"  {len(summary['pairs'])} alignment pairs"
        + (
            ": " + ", ".join(summary["pairs"][:6]) + (" ..." if len(summary["pairs"]) > 6 else "")
            if summary["pairs"]
            else ""
        )
    )


def _print_routes(out, summary: dict) -> None:
    """The SVD routes the store's rows were computed with, and what this machine's route cache holds now."""
    used = summary["svd_routes"]
    cache = summary["svd_route_cache"]
    if used:
        out.print("  SVD routes used: " + ", ".join(f"{shape} {route}" for shape, route in sorted(used.items())))
    if cache["routes"]:
        ages = [r["age_s"] for r in cache["routes"].values()]
        mine = ", ".join(f"{shape} {r['route']}" for shape, r in sorted(cache["routes"].items()))
        out.print(
            f"  route cache ({cache['path']}): {mine}; measured {_age(max(ages))} ago"
            + (f" (newest {_age(min(ages))} ago)" if _age(min(ages)) != _age(max(ages)) else ""),
            highlight=False,
        )
    else:
        out.print(f"  route cache ({cache['path']}): no routes measured for these shapes", highlight=False)


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("info")(user_errors(info_command))
