"""Benchmark `specdyn analyze` on a GPT-2-small-shaped series against the SVD floor and the paper's pipeline.

Writes (once) a series of 8 safetensors checkpoints shaped like GPT-2 small (12 blocks of 768x2304, 768x768,
768x3072, 3072x768 plus a 50257x768 embedding; biases and LayerNorms too), then prints, from one run:
- analyze: wall time of `specdyn analyze` in a fresh process, and its peak RSS;
- floor: the fastest plain LAPACK route per shape (numpy/torch gesdd, float64 Gram eigh), computing the same
  singular values and top-k vectors of the same matrices, data already in memory, no I/O;
- reference: docs/method.md's pipeline, five float32 torch SVDs per matrix per checkpoint (2 for alignment, 1 for
  metrics, 2 for pruning), timed on --ref-checkpoints checkpoints and scaled to all of them;
- rerun: `specdyn analyze` again with nothing new (in a fresh process, and the in-process time).

    python benchmarks/bench_analyze.py [--dir /tmp/specdyn-bench] [--checkpoints 8] [--ref-checkpoints 1]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

D, VOCAB, BLOCKS, TOP = 768, 50257, 12, 64


def gpt2_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"wte.weight": (VOCAB, D), "wpe.weight": (1024, D)}
    for i in range(BLOCKS):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (D,),
            p + "ln_1.bias": (D,),
            p + "attn.c_attn.weight": (D, 3 * D),
            p + "attn.c_attn.bias": (3 * D,),
            p + "attn.c_proj.weight": (D, D),
            p + "attn.c_proj.bias": (D,),
            p + "ln_2.weight": (D,),
            p + "ln_2.bias": (D,),
            p + "mlp.c_fc.weight": (D, 4 * D),
            p + "mlp.c_fc.bias": (4 * D,),
            p + "mlp.c_proj.weight": (4 * D, D),
            p + "mlp.c_proj.bias": (D,),
        }
    return shapes | {"ln_f.weight": (D,), "ln_f.bias": (D,)}


def write_series(out: Path, n: int) -> list[Path]:
    """Random init plus a low-rank drift that grows with the step, so spectra change across the series."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"step_{1000 * i:06d}.safetensors" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in gpt2_shapes().items()}
    drift = {
        k: (torch.randn(s[0], 8, generator=g), torch.randn(8, s[1], generator=g))
        for k, s in gpt2_shapes().items()
        if len(s) == 2
    }
    order = list(base)
    for i, p in enumerate(paths):
        sd = {
            k: (v + 0.01 * i * (drift[k][0] @ drift[k][1]) / 8 if k in drift else v).contiguous()
            for k, v in base.items()
        }
        save_file(sd, str(p), metadata={"step": str(1000 * i), "param_order": json.dumps(order)})
        print(f"wrote {p} ({p.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
    return paths


def load_matrices(path: Path) -> list[np.ndarray]:
    with safe_open(str(path), framework="pt") as f:
        return [f.get_tensor(k).float().numpy() for k in gpt2_shapes() if len(gpt2_shapes()[k]) == 2]


# ---- the plain routes the floor chooses from: each returns (all s, top-k U, top-k V)


def numpy_gesdd(W):
    U, s, Vh = np.linalg.svd(W, full_matrices=False)
    return s, U[:, :TOP], Vh[:TOP].T


def torch_gesdd(W):
    U, s, Vh = torch.linalg.svd(torch.from_numpy(W), full_matrices=False)
    return s.numpy(), U[:, :TOP].numpy(), Vh[:TOP].T.numpy()


def gram_eigh(W):
    wide = W.shape[0] < W.shape[1]
    A = (W.T if wide else W).astype(np.float64)
    lam, Q = np.linalg.eigh(A.T @ A)
    s = np.sqrt(np.clip(lam[::-1], 0, None))
    small = Q[:, ::-1][:, :TOP]
    big = (A @ small) / s[:TOP]
    return (s, small, big) if wide else (s, big, small)


ROUTES = {"numpy_gesdd": numpy_gesdd, "torch_gesdd": torch_gesdd, "gram_eigh": gram_eigh}


CLOCK = time.perf_counter  # --threads 1 switches to time.process_time: CPU seconds, robust to a loaded machine


def timed(fn, *args) -> float:
    t0 = CLOCK()
    fn(*args)
    return CLOCK() - t0


def floor_seconds(paths: list[Path]) -> tuple[float, dict]:
    """Sum over every matrix of the fastest plain route for its shape (routes picked on the first checkpoint)."""
    first = load_matrices(paths[0])
    best = {}
    for W in first:
        if W.shape not in best:
            times = {name: min(timed(fn, W) for _ in range(2)) for name, fn in ROUTES.items()}
            best[W.shape] = min(times, key=times.get)
    total = 0.0
    for p in paths:
        for W in load_matrices(p):
            total += timed(ROUTES[best[W.shape]], W)
    return total, {f"{m}x{n}": r for (m, n), r in best.items()}


def per_shape_ratios(paths: list[Path]) -> dict:
    """Per shape, best of 3: specdyn's SVD (the route analyze chose, alignment slices excluded) against the full
    Gram eigh floor on the same matrix, in this process. Also checks the accuracy rules against float64 gesdd."""
    from specdyn.spectral.svd import SVDEngine

    engine = SVDEngine(top=TOP)
    out = {}
    for W in load_matrices(paths[-1]):
        if W.shape in out:
            continue
        engine(W)  # picks (or reads) the route
        t_floor = min(timed(gram_eigh, W) for _ in range(3))
        t_ours = min(timed(engine, W) for _ in range(3))
        sp = engine(W)
        U64, s64, Vh64 = np.linalg.svd(W.astype(np.float64), full_matrices=False)
        s_err = float(np.max(np.abs(sp.s - s64)) / s64[0])
        sub_err = float(1 - np.linalg.svd(sp.U.T.astype(np.float64) @ U64[:, :TOP], compute_uv=False).min())
        out[f"{W.shape[0]}x{W.shape[1]}"] = {
            "route": engine.chosen.get(W.shape, engine.route),
            "floor_s": round(t_floor, 4),
            "specdyn_s": round(t_ours, 4),
            "ratio": round(t_ours / t_floor, 2),
            "sv_err": f"{s_err:.1e}",
            "top64_subspace_err": f"{sub_err:.1e}",
        }
    return out


def reference_seconds(paths: list[Path]) -> float:
    """docs/method.md section 2: per checkpoint, 2 SVDs per matrix for alignment, 1 for metrics, 2 for pruning."""
    total = 0.0
    for p in paths:
        for W in load_matrices(p):
            T = torch.from_numpy(W)
            t0 = time.perf_counter()
            for _ in range(5):
                torch.linalg.svd(T, full_matrices=False)
            total += time.perf_counter() - t0
    return total


CPU = {}  # CPU seconds (user + sys) of the last run_cli child


def run_cli(args: list[str], env=None) -> float:
    import os

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "specdyn", *args], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"specdyn {' '.join(args)} failed")
    CPU["last"] = usage.ru_utime + usage.ru_stime
    CPU["rss"] = max(CPU.get("rss", 0), usage.ru_maxrss * 1024)  # this child's own peak (wait4), in bytes
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/specdyn-bench"))
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--ref-checkpoints", type=int, default=1, help="0 skips the reference")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--threads",
        type=int,
        help="BLAS threads for analyze and the floor; with 1, times are CPU seconds (robust on a shared machine)",
    )
    args = ap.parse_args()
    # one folder per series length: analyze reads the whole folder, the floor only the first --checkpoints files
    series = args.dir / f"gpt2-series-{args.checkpoints}"
    if args.write_only:
        write_series(series, args.checkpoints)
        return
    # Written by a child process: a child's peak RSS (ru_maxrss) starts from its parent's size at fork, so this
    # process must stay small until analyze has run; each analyze child's own peak comes from wait4.
    subprocess.run(
        [sys.executable, __file__, "--write-only", "--dir", str(args.dir), "--checkpoints", str(args.checkpoints)],
        check=True,
    )
    paths = write_series(series, args.checkpoints)
    store = args.dir / "bench.zarr"
    ckpt_bytes = paths[0].stat().st_size

    # 1. analyze in a fresh process first, so RUSAGE_CHILDREN's peak RSS is analyze's own. The first run
    # starts from an empty SVD-route cache (it measures the routes); the second is what users see after that.
    import os
    import tempfile

    env = dict(os.environ, SPECDYN_CACHE_DIR=tempfile.mkdtemp(prefix="specdyn-cache-"))
    if args.threads:
        env.update({k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    cold_s = run_cli(["analyze", str(series), "--out", str(store), "--overwrite", "--quiet"], env)
    cold_cpu = CPU["last"]
    analyze_s = run_cli(["analyze", str(series), "--out", str(store), "--overwrite", "--quiet"], env)
    if args.threads == 1:
        global CLOCK
        cold_s, analyze_s = cold_cpu, CPU["last"]
        CLOCK = time.process_time
    peak_rss = CPU["rss"]  # of the analyze children only (RUSAGE_CHILDREN would include the series writer)
    rerun_cli_s = run_cli(["analyze", str(series), "--out", str(store), "--quiet"], env)
    os.environ["SPECDYN_CACHE_DIR"] = env["SPECDYN_CACHE_DIR"]
    from specdyn.analyze import analyze

    rerun_api_s = analyze([series], store, show_progress=False)["seconds"]
    routes_used = json.loads((store / "zarr.json").read_text())["attributes"]["specdyn"]["svd_routes"]

    # 2. the floor and the reference, in this process, data in memory
    if args.threads:
        import scipy.linalg.lapack  # noqa: F401  loaded first, so that the limit reaches its own OpenBLAS too
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
    floor_s, floor_routes = floor_seconds(paths)
    shape_ratios = per_shape_ratios(paths)
    ref_sub = reference_seconds(paths[: args.ref_checkpoints]) if args.ref_checkpoints else float("nan")
    ref_s = ref_sub * len(paths) / max(args.ref_checkpoints, 1)

    budget = 2 * ckpt_bytes + 2**30
    rows = [
        ("checkpoints", f"{len(paths)} x {ckpt_bytes / 2**20:.0f} MiB", ""),
        (
            "analyze, first run on this machine (measures SVD routes)",
            f"{cold_s:.1f} s",
            f"cold / floor = {cold_s / floor_s:.2f}",
        ),
        ("analyze (fresh process, routes known)", f"{analyze_s:.1f} s", ""),
        (
            "floor (fastest plain LAPACK, no I/O)",
            f"{floor_s:.1f} s",
            f"analyze / floor = {analyze_s / floor_s:.2f}  (target <= 0.8)",
        ),
        (
            f"reference (5 torch SVDs/matrix; {args.ref_checkpoints} ckpts scaled)",
            f"{ref_s:.1f} s",
            f"reference / analyze = {ref_s / analyze_s:.1f}x  (target >= 5)",
        ),
        (
            "peak RSS of analyze",
            f"{peak_rss / 2**30:.2f} GiB",
            f"budget 2 x ckpt + 1 GiB = {budget / 2**30:.2f} GiB ({peak_rss / budget:.2f} of it)",
        ),
        ("rerun, nothing new (fresh process)", f"{rerun_cli_s:.2f} s", "target < 2 s"),
        ("rerun, nothing new (in-process)", f"{rerun_api_s:.2f} s", ""),
    ]
    if args.threads == 1:
        print("times below are CPU seconds (user + sys) with 1 BLAS thread, for analyze and the floor alike")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")
    print(f"analyze routes: {routes_used}")
    print(f"floor routes:   {floor_routes}")
    print("per shape, SVD only (best of 3), specdyn's route vs the full Gram eigh floor:")
    for shape, row in shape_ratios.items():
        print(f"  {shape:>10}: {row}")


if __name__ == "__main__":
    main()
