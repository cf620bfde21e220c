"""Benchmark every `specdyn plot` kind (and `specdyn report`) on a store of 50 matrices x 400 checkpoints.

Builds once (in --dir, reused) a synthetic store shaped like a 12-layer transformer (embedding, 4 matrices per
layer, decoder; d = 48, top 48 vectors) with a grokking-shaped run.json, then times, for each kind, drawing the
figure from a freshly opened store and saving it as PNG at the CLI's default 200 dpi. Target: < 3 s each.

    python benchmarks/bench_plot.py [--dir /tmp/specdyn-bench-plot] [--checkpoints 400] [--layers 12]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: specdyn and tests.synthetic_store

import specdyn  # noqa: E402
from specdyn.errors import SpecdynError  # noqa: E402
from specdyn.plots import PLOTS, style  # noqa: E402
from tests.synthetic_store import grokking_log, transformer_shapes, write_store  # noqa: E402


def build(store: Path, n_ckpt: int, layers: int) -> None:
    if (store / "zarr.json").exists():
        print(f"reusing {store}", file=sys.stderr)
        return
    steps = [0] + list(np.unique(np.round(np.geomspace(1, 40000, n_ckpt * 2)).astype(int)))[: n_ckpt - 1]
    steps = sorted(set(steps))
    shapes = transformer_shapes(layers, d=48, vocab=97)
    t = time.perf_counter()
    write_store(store, shapes, steps, top=48, run_log=grokking_log(steps))
    print(
        f"built {store}: {len(shapes)} matrices x {len(steps)} checkpoints in {time.perf_counter() - t:.0f} s",
        file=sys.stderr,
    )


def add_eval_results(store: Path) -> None:
    """Synthetic `prune-eval` (3 keep fractions at every checkpoint) and `interpolate` (8 split steps x 9 pairs x
    11 points) results, written with the evaluation commands' own layouts, so `prune` and `interp` are timed too."""
    from specdyn.evals import interpolate, prune, results
    from specdyn.evals.lowrank import keep_rank

    if results.read_group(store, prune.GROUP) is not None:
        return
    st = specdyn.open_store(store)
    rng = np.random.default_rng(0)
    rows = [{"step": int(s), "checkpoint": c, "source": 0} for s, c in zip(st.steps, st.checkpoints)]
    keep, metrics, names = [0.25, 0.5, 0.75], ["loss", "err"], st.matrices[:-1]
    ranks = {f: {m: keep_rank(st.matrix_spec(m).k, f) for m in names} for f in keep}
    a = prune._layout(None, rows, keep, metrics, names, ranks, {})
    loss = 4.6 * np.exp(-np.arange(len(rows)) / 60)[:, None, None]
    a["full"][1][:] = loss * np.array([1, 1.2])[None, :, None] + rng.uniform(0, 0.01, a["full"][1].shape)
    a["top_kept"][1][:] = a["full"][1][:, None] * np.array([1.5, 1.1, 1.02])[None, :, None, None]
    a["bottom_kept"][1][:] = 4.7
    a["done"][1][:] = True
    results.write_group(
        store, prune.GROUP, a, {"task": "synthetic", "bn_recal": False}, row_dim=prune.ROW, coords=prune.COORDS
    )
    pairs = [
        {"ckpt_a": f"b{s}-{i}", "ckpt_b": f"b{s}-{i + 1}", "split_step": s, "label": ""}
        for s in st.steps[::50]
        for i in range(9)
    ]
    grid = interpolate.alphas(11)
    b = interpolate._layout(pairs, grid, metrics, st.matrices, 48, None)
    bump = np.sin(np.pi * grid)[None, :, None, None]
    for c, height in zip(interpolate.CURVES, (0.3, 0.35, 0.05)):
        b[c][1][:] = 1.0 + height * bump * rng.uniform(0.5, 1.5, (len(pairs), 1, 1, 1))
        b[f"{c}_barrier"][1][:] = np.stack([interpolate.curve_barriers(y) for y in b[c][1]])
    b["effective_rank"][1][:] = rng.uniform(0.3, 0.9, b["effective_rank"][1].shape)
    b["done"][1][:] = True
    results.write_group(
        store, interpolate.GROUP, b, {"task": "synthetic"}, row_dim=interpolate.ROW, coords=interpolate.COORDS
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "specdyn-bench-plot")
    ap.add_argument("--checkpoints", type=int, default=400)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dpi", type=int, default=200)
    args = ap.parse_args()
    store = args.dir / "run" / "specdyn.zarr"
    build(store, args.checkpoints, args.layers)
    from specdyn.store import write_session

    with write_session(store, "bench"):  # re-consolidates the metadata, so readers see the new groups
        add_eval_results(store)
    st = specdyn.open_store(store)
    print(f"\n{len(st.matrices)} matrices, {len(st.pairs)} pairs, {len(st)} checkpoints, png at {args.dpi} dpi\n")
    print("| kind | draw (s) | save png (s) | total (s) | CPU (s) | size (KiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    out = args.dir / "figures"
    for kind, fn in PLOTS.items():
        st = specdyn.open_store(store)  # cold: reading the store is part of the cost
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            fig = fn([st])
        except SpecdynError as e:
            print(f"| {kind} | n/a ({e.message.split(';')[0].split(': ', 1)[1]}) | | | | |")
            continue
        t1 = time.perf_counter()
        path = style.save(fig, out / f"{kind}.png", dpi=args.dpi)
        t2, c2 = time.perf_counter(), time.process_time()
        print(
            f"| {kind} | {t1 - t0:.2f} | {t2 - t1:.2f} | {t2 - t0:.2f} | {c2 - c0:.2f} | {path.stat().st_size / 1024:.0f} |"
        )
    from specdyn.report import build_report

    t0, c0 = time.perf_counter(), time.process_time()
    page = build_report([specdyn.open_store(store)])
    (out / "report.html").write_text(page)
    t2, c2 = time.perf_counter(), time.process_time()
    print(
        f"| report (1 store, {page.count('<img')} figures) | | | {t2 - t0:.2f} | {c2 - c0:.2f} | {len(page) / 1024:.0f} |"
    )
    print(f"\nload average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
