"""One GPT-2-small-shaped checkpoint: `specdyn analyze` against WeightWatcher 0.7.7's `analyze()`, each in a fresh
process, in CPU seconds (user + system, one BLAS thread: robust on a shared machine) and wall seconds.

WeightWatcher is given a torch model with the checkpoint's 50 matrices as `nn.Linear` (out x in, as GPT-2's Conv1D
weights act) and `nn.Embedding` layers, loaded from the same file, and its default `analyze(plot=False)` with `max_N` raised so that
it does not skip the 50257-row embedding (its default leaves out matrices with more than 50,000 rows): every
singular value of every matrix and its power-law fit (its table is what `specdyn analyze --topk 0` gives, and
`specdyn export` writes). Each tool's process time includes its start-up and reading the checkpoint. The runs are
interleaved (specdyn, WW, specdyn --topk 0, ...) and repeated, so both see the same machine load.

    python benchmarks/bench_ww.py [--dir /tmp/specdyn-bench] [--repeat 2]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import gpt2_shapes, write_series  # noqa: E402

WW_CHILD = """
import logging, sys, torch, weightwatcher as ww
from safetensors.torch import load_file
logging.getLogger("weightwatcher").setLevel(logging.ERROR)
sd = load_file(sys.argv[1])
layers = torch.nn.ModuleList()
for name in sys.argv[2:]:
    W = sd[name]
    if name.startswith(("wte", "wpe")):
        m = torch.nn.Embedding(*W.shape)
        m.weight.data = W
    else:  # GPT-2's Conv1D stores in x out: the Linear holds its transpose (out x in)
        m = torch.nn.Linear(W.shape[0], W.shape[1], bias=False)
        m.weight.data = W.T.contiguous()
    layers.append(m)
details = ww.WeightWatcher(model=layers).analyze(plot=False, max_N=10**6)
assert len(details) == len(sys.argv) - 2, len(details)
"""


def child_cpu(cmd: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds user + system, wall seconds) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd[:4])}")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/specdyn-bench"))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    series = args.dir / "gpt2-series-1"
    (path,) = write_series(series, 1)
    names = [k for k, s in gpt2_shapes().items() if len(s) == 2]
    env = dict(os.environ, SPECDYN_CACHE_DIR=tempfile.mkdtemp(prefix="specdyn-cache-"))
    env.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    store = Path(tempfile.mkdtemp(prefix="specdyn-ww-")) / "s.zarr"
    specdyn = [sys.executable, "-m", "specdyn", "analyze", str(series), "--out", str(store), "--overwrite", "-q"]
    runs = {
        "specdyn analyze (top-64 vectors, every metric)": specdyn,
        "specdyn analyze --topk 0 (values and their metrics)": specdyn + ["--topk", "0"],
        "WeightWatcher 0.7.7 analyze()": [sys.executable, "-c", WW_CHILD, str(path), *names],
    }
    child_cpu(specdyn, env)  # measures the SVD routes once (the cache every later run reads)
    load0 = os.getloadavg()
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for name, cmd in runs.items():
            got[name].append(child_cpu(cmd, env))
    load1 = os.getloadavg()
    ww_cpu = min(c for c, _ in got["WeightWatcher 0.7.7 analyze()"])
    ww_wall = min(w for _, w in got["WeightWatcher 0.7.7 analyze()"])
    print(f"one checkpoint (50 matrices, 475 MiB), fresh processes, 1 BLAS thread, best of {args.repeat}; load average")
    print(f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end (2 cores)")
    print(f"  {'run':<52} {'CPU s':>7} {'wall s':>7} {'WW / run (CPU)':>15} {'(wall)':>7}")
    for name, values in got.items():
        cpu, wall = min(c for c, _ in values), min(w for _, w in values)
        print(f"  {name:<52} {cpu:7.2f} {wall:7.2f} {ww_cpu / cpu:15.2f} {ww_wall / wall:7.2f}")


if __name__ == "__main__":
    main()
