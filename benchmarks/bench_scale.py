"""Per-checkpoint `specdyn analyze` time and peak RSS for Pythia-160M, -410M and -1B shapes, against the floor.

One synthetic bf16 safetensors checkpoint per model (GPT-NeoX layout, random weights; written once to --dir by a
child process). Each is analyzed twice in fresh processes with a fresh SVD route cache (the first run measures the routes of each
new shape; the second is what later checkpoints cost: its wall time and own peak RSS, via wait4), then
the floor (full float64 Gram eigh per matrix, data in memory, no I/O) is timed here on the same matrices, so the
growth of the cost with the width (about d^3 per matrix) is visible. By default the larger models are analyzed on
a subset of their layers (the embeddings always included) to keep the run in minutes on 2 cores; --full runs
every layer.

    python benchmarks/bench_scale.py [--dir /work/scratch/specdyn-scale] [--full] [--models pythia-160m,...]
"""

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import CPU, HEADS, MODELS, gram_eigh_floor, matrices, run_child, write_checkpoint  # noqa: E402

SUBSETS = {  # layers analyzed by default (None: all)
    "pythia-160m": None,
    "pythia-410m": "gpt_neox.layers.[0-1].*",
    "pythia-1b": "gpt_neox.layers.0.*",
}
EMBEDDINGS = ["gpt_neox.embed_in.weight", "embed_out.weight"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/work/scratch/specdyn-scale"))
    ap.add_argument("--models", default=",".join(SUBSETS))
    ap.add_argument("--full", action="store_true", help="every layer of every model")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = args.models.split(",")
    if args.write_only:
        for m in models:
            write_checkpoint(args.dir / m / "step_0.safetensors", MODELS[m](), HEADS[m])
        return
    # Written by a child, so this process stays small before the analyze children run (their peak RSS is theirs).
    subprocess.run(
        [sys.executable, __file__, "--write-only", "--dir", str(args.dir), "--models", args.models], check=True
    )
    results = {}
    for m in models:  # 1. every analyze first, in fresh processes
        shapes = MODELS[m]()
        subset = None if args.full else SUBSETS[m]
        include = [subset, *EMBEDDINGS] if subset else []
        picked = [
            n for n, s in shapes.items() if len(s) == 2 and (not include or any(fnmatch.fnmatch(n, p) for p in include))
        ]
        store = Path(tempfile.mkdtemp(prefix="specdyn-scale-")) / "s.zarr"
        cli = ["analyze", str(args.dir / m), "--out", str(store), "--quiet"]
        for p in include:
            cli += ["--include", p]
        env = dict(os.environ, SPECDYN_CACHE_DIR=tempfile.mkdtemp(prefix="specdyn-cache-"))
        cold, _ = run_child(cli, env)  # a first run on this machine measures the SVD routes of each new shape
        cold_cpu = CPU["last"]
        shutil.rmtree(store)
        wall, rss = run_child(cli, env)  # what every later checkpoint costs
        shutil.rmtree(store.parent)
        largest = max(shapes[n][0] * shapes[n][1] for n in picked)
        results[m] = {
            "matrices": len(picked),
            "of": sum(len(s) == 2 for s in shapes.values()),
            "subset": subset,
            "cold_s": cold,
            "cold_cpu_s": cold_cpu,
            "analyze_s": wall,
            "analyze_cpu_s": CPU["last"],
            "peak_rss": rss,
            "bound": largest * 8 + 2**30,
            "picked": picked,
        }
    for m in models:  # 2. the floors, in this process
        floor, per_shape = 0.0, {}
        for _, W in matrices(args.dir / m / "step_0.safetensors", results[m]["picked"]):
            t0, c0 = time.perf_counter(), time.process_time()
            gram_eigh_floor(W)
            dt = time.perf_counter() - t0
            results[m]["floor_cpu_s"] = results[m].get("floor_cpu_s", 0.0) + time.process_time() - c0
            floor += dt
            per_shape.setdefault(f"{W.shape[0]}x{W.shape[1]}", []).append(dt)
        results[m]["floor_s"] = floor
        results[m]["floor_per_shape_s"] = {k: round(min(v), 3) for k, v in per_shape.items()}
    print(f"{'model':<12} {'matrices':>12} {'analyze':>9} {'floor':>8} {'ratio':>6} {'peak RSS':>9} {'bound':>8}")
    for m, r in results.items():
        print(
            f"{m:<12} {r['matrices']:>5} of {r['of']:<4} {r['analyze_s']:>8.1f}s {r['floor_s']:>7.1f}s "
            f"{r['analyze_s'] / r['floor_s']:>6.2f} {r['peak_rss'] / 2**30:>7.2f}Gi {r['bound'] / 2**30:>6.2f}Gi"
            f"   {'layers ' + r['subset'] + ' + embeddings' if r['subset'] else 'all layers'}"
        )
    for m, r in results.items():
        print(
            f"{m} CPU seconds: analyze {r['analyze_cpu_s']:.1f}, floor {r['floor_cpu_s']:.1f}, ratio "
            f"{r['analyze_cpu_s'] / r['floor_cpu_s']:.2f}"
        )
    for m, r in results.items():
        print(f"{m} floor per matrix (s, best of its shape): {json.dumps(r['floor_per_shape_s'])}")


if __name__ == "__main__":
    main()
