"""Store creation and one row's write for models of many matrices (issue 18): time and files, per layout.

A mixture of experts of E experts x 3 projections (gate, up: 64 x 32; down: 32 x 64) plus a few shared
matrices, with synthetic spectra (no SVD: this times the store only). For each count the store is created
(`store.writing.create_store`, the layout built beside the path and renamed in) and one row is written with
`RowWriter` (values, vectors, metrics, `done`), both in the layout specdyn picks for that count: per-matrix groups
up to `layout.PACK_ABOVE` matrices, shape buckets in zarr shards above it. `--groups` forces the per-matrix
layout (what stores used before, to compare).

    python benchmarks/bench_store.py [--matrices 2000,50000] [--groups] [--dir /tmp/specdyn-bench-store]
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specdyn.spectral.matrices import MatrixSpec  # noqa: E402
from specdyn.spectral.rows import RowResult  # noqa: E402
from specdyn.spectral.svd import Spectrum  # noqa: E402
from specdyn.store import layout  # noqa: E402
from specdyn.store.layout import ROW_METRICS  # noqa: E402
from specdyn.store.writing import RowWriter, create_store, resize_rows, write_session  # noqa: E402

TOP = 64


def specs_for(count: int) -> list[MatrixSpec]:
    specs = [MatrixSpec("embed.weight", (1000, 32), "embedding")]
    e = 0
    while len(specs) < count:
        for p, shape in (("gate", (64, 32)), ("up", (64, 32)), ("down", (32, 64))):
            specs.append(MatrixSpec(f"layers.{e // 64}.experts.{e % 64}.{p}_proj.weight", shape, "linear"))
        e += 1
    return specs[:count]


def row_for(specs: list[MatrixSpec], rng) -> RowResult:
    spectra = []
    for s in specs:
        m, n = s.shape
        r = min(TOP, s.k)
        spectra.append(Spectrum(np.sort(rng.random(s.k))[::-1], rng.random((m, r), np.float32),
                                rng.random((n, r), np.float32)))  # fmt: skip
    metrics = {name: rng.random(len(specs)) for name in ROW_METRICS}
    return RowResult(metrics, spectra, np.zeros((0, TOP), np.float32), np.zeros(0), [])


def files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def one(count: int, where: Path, groups: bool) -> dict:
    if groups:
        layout.PACK_ABOVE = 10**9
    store = where / f"s{count}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    specs = specs_for(count)
    t0, c0 = time.perf_counter(), time.process_time()
    create_store(store, specs, [], TOP, {"options": {}})
    created, created_cpu = time.perf_counter() - t0, time.process_time() - c0
    n_created = files(store)
    row = row_for(specs, np.random.default_rng(0))
    t0, c0 = time.perf_counter(), time.process_time()
    with write_session(store, "bench") as root:
        resize_rows(root, 1)
        RowWriter(root, specs).write(0, 0, "step_0", 0, row)
    written, written_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"matrices": count, "layout": "groups" if groups or count <= layout.PACK_ABOVE else "packed",
           "create_s": round(created, 2), "create_cpu_s": round(created_cpu, 2), "files_created": n_created,
           "row_s": round(written, 2), "row_cpu_s": round(written_cpu, 2),
           "row_files": files(store) - n_created}  # fmt: skip
    shutil.rmtree(store)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrices", default="2000,50000")
    ap.add_argument("--groups", action="store_true", help="per-matrix groups whatever the count (older layout)")
    ap.add_argument("--dir", default="/tmp/specdyn-bench-store")
    args = ap.parse_args()
    where = Path(args.dir)
    where.mkdir(parents=True, exist_ok=True)
    for count in (int(c) for c in args.matrices.split(",")):
        print(one(count, where, args.groups), flush=True)


if __name__ == "__main__":
    main()
