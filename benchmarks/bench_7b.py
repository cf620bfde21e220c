"""`specdyn analyze` on a Llama-2-7B-shaped checkpoint: time and peak RSS against the memory bound.

Writes once (to --dir, default /work/scratch/specdyn-7b; reused) a bf16 safetensors checkpoint with Llama-2-7B's
tensors (32000x4096 embedding and lm_head, 32 layers of q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008;
6.74 B parameters, 13.5 GB), then analyzes the tensors selected by --include in a fresh process and prints its
wall time, its peak RSS, and the bound: the largest selected matrix's float64 working set (m x n x 8 bytes) plus
1 GiB. The floor (full float64 Gram eigh per matrix, data in memory) is timed on the same matrices.

    python benchmarks/bench_7b.py                                   # embeddings + layer 0 (9 matrices)
    python benchmarks/bench_7b.py --include 'model.layers.[0-7].*'  # the first 8 layers
    python benchmarks/bench_7b.py --all                             # every matrix (about an hour on 2 cores)
"""

import argparse
import fnmatch
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import CPU, HEADS, MODELS, gram_eigh_floor, matrices, run_child, write_checkpoint  # noqa: E402

DEFAULT_INCLUDE = ["model.embed_tokens.weight", "model.layers.0.*", "lm_head.weight"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/work/scratch/specdyn-7b"))
    ap.add_argument("--include", action="append", help="tensor globs to analyze (repeatable)")
    ap.add_argument("--all", action="store_true", help="analyze every matrix of the checkpoint")
    ap.add_argument("--no-floor", action="store_true", help="skip timing the floor")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--delete", action="store_true", help="delete the 13.5 GB checkpoint afterwards")
    args = ap.parse_args()
    shapes = MODELS["llama-2-7b"]()
    run = args.dir / "run"
    ckpt = write_checkpoint(run / "step_0.safetensors", shapes, HEADS["llama-2-7b"])
    include = [] if args.all else (args.include or DEFAULT_INCLUDE)
    picked = [
        n for n, s in shapes.items() if len(s) == 2 and (not include or any(fnmatch.fnmatch(n, p) for p in include))
    ]
    largest = max(picked, key=lambda n: shapes[n][0] * shapes[n][1])
    bound = shapes[largest][0] * shapes[largest][1] * 8 + 2**30

    store = Path(tempfile.mkdtemp(prefix="specdyn-7b-store-")) / "s.zarr"
    cli = ["analyze", str(run), "--out", str(store), "--quiet", "--workers", str(args.workers)]
    for p in include:
        cli += ["--include", p]
    env = dict(os.environ)
    wall, rss = run_child(cli, env)
    cpu = CPU["last"]
    floor = None
    if not args.no_floor:
        floor = 0.0
        for _, W in matrices(ckpt, picked):
            t0 = time.perf_counter()
            gram_eigh_floor(W)
            floor += time.perf_counter() - t0
    shutil.rmtree(store.parent)
    print(
        f"checkpoint: {ckpt} ({ckpt.stat().st_size / 1e9:.2f} GB, {sum(len(s) == 2 for s in shapes.values())} matrices)"
    )
    print(f"analyzed: {len(picked)} matrices ({'all' if not include else ', '.join(include)}), workers={args.workers}")
    print(f"analyze wall time (fresh process): {wall:.1f} s   CPU time {cpu:.1f} s")
    if floor is not None:
        print(f"floor (full Gram eigh per matrix, in memory): {floor:.1f} s   analyze / floor = {wall / floor:.2f}")
    print(
        f"peak RSS: {rss / 2**30:.2f} GiB   bound ({largest} {shapes[largest][0]}x{shapes[largest][1]} float64 + 1 GiB)"
        f" = {bound / 2**30:.2f} GiB   ({rss / bound:.2f} of it)"
    )
    if args.delete:
        ckpt.unlink()


if __name__ == "__main__":
    main()
