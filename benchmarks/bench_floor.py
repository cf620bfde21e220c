"""`specdyn analyze` against the unavoidable work of an exact analysis, per phase and per shape, in one run.

The unavoidable work (issue 19), per matrix, with the matrix already in memory and no I/O: the float64 Gram matrix
of the smaller side, one tridiagonal reduction (dsytrd, blocked workspace), every eigenvalue (dsterf), the top-64
eigenvectors by bisection and inverse iteration (dstebz + dstein), their back-transformation by the reflectors
(dormqr, as dormtr) and the other side's 64 vectors (W v / s). The values-only figure is its first three steps.

Everything is CPU seconds with one BLAS thread (OMP/OPENBLAS/MKL_NUM_THREADS=1, set before numpy loads): CPU time
counts work done, not waiting for a core, so the ratios hold on a shared machine (the load average is printed).
Printed, side by side:
- floor: each step above, per shape and in total, for the checkpoints of the series;
- analyze (in this process, route cache warm): CPU time per phase (SVDs per shape, alignment slices, metrics,
  alignment, writing, derive: stability and heavy tails, plan and store creation, other threads: reading and
  zarr), against the floor;
- analyze as one fresh process (start-up included), its CPU time (user + system) against the floor;
- the same two for `--topk 0` against the values-only floor.

    python benchmarks/bench_floor.py [--checkpoints 4] [--dir /tmp/specdyn-bench] [--skip-process]
"""

import os

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.linalg import lapack  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import gpt2_shapes, write_series  # noqa: E402

TOP = 64
CLOCK = time.thread_time


def load_matrices(path: Path) -> list[np.ndarray]:
    from safetensors import safe_open

    shapes = gpt2_shapes()
    with safe_open(str(path), framework="np") as f:
        return [f.get_tensor(k) for k in shapes if len(shapes[k]) == 2]


def gram64(W: np.ndarray) -> np.ndarray:
    """The float64 Gram matrix of the smaller side, in 16 MiB row blocks (a float64 copy of a 50257 x 768
    embedding would be 309 MB)."""
    A = W.T if W.shape[0] < W.shape[1] else W
    step = max(1, (1 << 21) // A.shape[1])
    G = np.zeros((A.shape[1], A.shape[1]))
    for i in range(0, A.shape[0], step):
        blk = A[i : i + step].astype(np.float64)
        G += blk.T @ blk
    return G


def floor_steps(W: np.ndarray, values_only: bool = False) -> dict[str, float]:
    """CPU seconds of each step of the unavoidable work on one matrix."""
    t, out = CLOCK(), {}

    def lap(name):
        nonlocal t
        now = CLOCK()
        out[name] = now - t
        t = now

    G = gram64(W)
    lap("gram")
    n = G.shape[0]
    lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
    c, d, e, tau, _ = lapack.dsytrd(G, lower=1, lwork=lwork)
    lap("dsytrd")
    evals, _ = lapack.dsterf(d.copy(), e.copy())
    lap("dsterf")
    if values_only:
        return out
    m, w, iblock, isplit, _ = lapack.dstebz(d, e, 3, 0.0, 0.0, n - TOP + 1, n, 0.0, b"B")
    z, _ = lapack.dstein(d, e, w[:m], iblock, isplit)
    lap("dstebz+dstein")
    Z = np.asfortranarray(z[:, :m])
    tail, _, _ = lapack.dormqr("L", "N", c[1:, : n - 1], tau, Z[1:], lwork=64 * m + 65 * 64)
    Z[1:] = tail
    lap("dormtr")
    s = np.sqrt(np.clip(evals[::-1][:TOP], 0, None))
    small = Z[:, ::-1].astype(np.float32)
    _ = (W @ small if W.shape[0] >= W.shape[1] else W.T @ small) / s.astype(np.float32)
    lap("other side")
    return out


def floor(paths: list[Path], values_only: bool) -> tuple[dict, dict]:
    """Total CPU seconds per step and per shape over every matrix of every checkpoint."""
    steps, shapes = defaultdict(float), defaultdict(float)
    for p in paths:
        for W in load_matrices(p):
            got = floor_steps(W, values_only)
            for k, v in got.items():
                steps[k] += v
            shapes[f"{W.shape[0]}x{W.shape[1]}"] += sum(got.values())
    return dict(steps), dict(shapes)


class Phases:
    """CPU time of this thread attributed to the innermost instrumented phase; the rest of the process's CPU time
    (the reader thread, zarr's threads) is reported as "other threads"."""

    def __init__(self):
        self.times, self.stack, self.main = defaultdict(float), [], threading.get_ident()
        self.t = CLOCK()

    def _switch(self):
        now = CLOCK()
        self.times[self.stack[-1] if self.stack else "other (this thread)"] += now - self.t
        self.t = now

    @contextlib.contextmanager
    def phase(self, name):
        if threading.get_ident() != self.main:
            yield
            return
        self._switch()
        self.stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self.stack.pop()

    def wrap(self, owner, attr, name):
        fn = getattr(owner, attr)

        def wrapped(*a, **k):
            label = name(*a) if callable(name) else name
            if label is None:
                return fn(*a, **k)
            with self.phase(label):
                return fn(*a, **k)

        setattr(owner, attr, wrapped)
        return fn


def instrument(phases: Phases) -> list:
    """Wrap the functions analyze spends its time in; returns what to restore."""
    import specdyn.analyze.compute as compute
    import specdyn.analyze.run as run
    import specdyn.spectral.rows as rows
    import specdyn.store.writing as writing
    from specdyn.spectral.svd import SVDEngine

    def svd_label(engine, W):
        if phases.stack and phases.stack[-1].startswith("slices"):
            return None  # a slice's SVD counts as the slices
        return f"svd {W.shape[0]}x{W.shape[1]}" if W.ndim == 2 else "svd"

    targets = [
        (SVDEngine, "__call__", svd_label),
        (rows, "slice_vectors", "slices (vo, qk heads)"),
        (rows, "spectrum_metrics", "metrics"),
        (rows.RowComputer, "assemble", "alignment"),
        (writing.RowWriter, "write", "write rows"),
        (writing.RowWriter, "matrix", "write rows"),
        (rows, "derive_stability", "derive: stability"),
        (writing, "fill_from_sv", "derive: heavy tails"),
        (writing, "fill_heavy_tail", "derive: heavy tails"),
        (run, "plan", "plan + create store"),
        (run, "create_store", "plan + create store"),
        (compute, "record_routes", "write rows"),
    ]
    # names move as the code changes: what is not there is not instrumented (its time shows as "other")
    return [(owner, attr, phases.wrap(owner, attr, name)) for owner, attr, name in targets if hasattr(owner, attr)]


def analyze_in_process(series: Path, store: Path, topk: int) -> tuple[dict, float]:
    from specdyn.analyze import AnalyzeOptions
    from specdyn.analyze.run import analyze

    phases = Phases()
    saved = instrument(phases)
    try:
        p0, m0 = time.process_time(), CLOCK()
        phases.t = m0
        analyze([series], store, AnalyzeOptions(topk=topk, overwrite=True), show_progress=False)
        phases._switch()
        total = time.process_time() - p0
        phases.times["other threads (reading, zarr)"] = total - (CLOCK() - m0)
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    return dict(phases.times), total


def analyze_process(series: Path, store: Path, topk: int) -> float:
    """CPU seconds (user + system) of `specdyn analyze` as one fresh process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdyn", "analyze", str(series), "--out", str(store), "--overwrite", "--quiet"]
        + ["--topk", str(topk)]
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit("specdyn analyze failed")
    return usage.ru_utime + usage.ru_stime


def warm_routes(path: Path) -> dict:
    """Measure (or read) the SVD route of every shape once, so that the timed runs find the cache warm."""
    from specdyn.spectral.svd import SVDEngine

    engine = SVDEngine(top=TOP)
    for W in load_matrices(path):
        if W.shape not in engine.chosen:
            engine(W)
    return engine.summary()


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def table(title: str, rows: list[tuple[str, float, float | None]], total_floor: float) -> None:
    print(f"\n{title}")
    print(f"  {'phase':<34} {'analyze':>9} {'floor':>9} {'ratio':>7}")
    for name, ours, fl in rows:
        ratio = f"{ours / fl:7.2f}" if fl else "       "
        fls = f"{fl:9.2f}" if fl is not None else "        -"
        print(f"  {name:<34} {ours:9.2f} {fls} {ratio}  ({ours / total_floor:.3f} of the floor)")


def report(label: str, times: dict, total: float, steps: dict, shapes: dict) -> None:
    floor_total = sum(steps.values())
    svd = {}
    for k, v in times.items():  # analyze decomposes a Conv1D weight as out x in: the floor's shape transposed
        if k.startswith("svd "):
            m, n = k[4:].split("x")
            key = k[4:] if k[4:] in shapes or f"{n}x{m}" not in shapes else f"{n}x{m}"
            svd[key] = svd.get(key, 0.0) + v
    rows = [(f"SVD {shape}", svd.get(shape, 0.0), fl) for shape, fl in sorted(shapes.items())]
    rows += [(k, v, None) for k, v in sorted(times.items(), key=lambda kv: -kv[1]) if not k.startswith("svd")]
    table(f"{label}: CPU s per phase (in-process, route cache warm)", rows, floor_total)
    print(f"  {'total':<34} {total:9.2f} {floor_total:9.2f} {total / floor_total:7.2f}")
    print(f"  beyond the floor: {total - floor_total:.2f} CPU s, of which SVDs {sum(svd.values()) - floor_total:+.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/specdyn-bench"))
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--skip-process", action="store_true", help="no fresh-process runs (in-process phases only)")
    ap.add_argument("--skip-values", action="store_true", help="no --topk 0 runs")
    args = ap.parse_args()
    series = args.dir / f"gpt2-series-{args.checkpoints}"
    paths = write_series(series, args.checkpoints)
    cache = Path(tempfile.mkdtemp(prefix="specdyn-cache-"))
    os.environ["SPECDYN_CACHE_DIR"] = str(cache)
    work = Path(tempfile.mkdtemp(prefix="specdyn-floor-"))
    started = load()
    try:
        routes = warm_routes(paths[0])
        steps, shapes = floor(paths, values_only=False)
        times, total = analyze_in_process(series, work / "a.zarr", TOP)
        fresh = analyze_process(series, work / "b.zarr", TOP) if not args.skip_process else None
        if not args.skip_values:
            vsteps, vshapes = floor(paths, values_only=True)
            vtimes, vtotal = analyze_in_process(series, work / "v.zarr", 0)
            vfresh = analyze_process(series, work / "w.zarr", 0) if not args.skip_process else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    print(f"{len(paths)} GPT-2-small-shaped checkpoints; CPU seconds, one BLAS thread; load average {started} at the")
    print(f"start, {load()} at the end (2 cores); routes: {json.dumps(routes)}")
    print("\nfloor steps (CPU s): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    report("analyze --topk 64", times, total, steps, shapes)
    fl = sum(steps.values())
    if fresh is not None:
        print(f"  analyze as one fresh process (start-up included): {fresh:.2f} CPU s = {fresh / fl:.2f} x the floor")
    if not args.skip_values:
        print("\nvalues-only floor steps (CPU s): " + ", ".join(f"{k} {v:.2f}" for k, v in vsteps.items()))
        report("analyze --topk 0", vtimes, vtotal, vsteps, vshapes)
        vf = sum(vsteps.values())
        if vfresh is not None:
            print(f"  analyze --topk 0 as one fresh process: {vfresh:.2f} CPU s = {vfresh / vf:.2f} x the values floor")


if __name__ == "__main__":
    main()
