"""Computing rows: every matrix's SVD and measurements, in this process (BLAS threads on every core, the next
matrices read ahead) or over processes or a Dask cluster; rows are written in order by this process."""

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor

from specdyn import console
from specdyn.analyze.options import AnalyzeOptions
from specdyn.errors import SpecdynError
from specdyn.io import Checkpoint, CheckpointError, CheckpointReader
from specdyn.io.prefetch import prefetch
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.rows import RowComputer
from specdyn.spectral.svd import SVDEngine
from specdyn.store.writing import record_routes, write_row

PREFETCH_BYTES = 512 << 20  # matrices read ahead of the SVDs, overlapping I/O with compute


def _matrices(ckpt: Checkpoint, specs: list[MatrixSpec], trust_pickle: bool):
    """Yield (spec, float32 matrix) for one checkpoint, reading tensor by tensor."""
    with CheckpointReader(ckpt, trust_pickle=trust_pickle) as reader:
        for spec in specs:
            yield spec, spec.flatten(reader.tensor(spec.name))


def _checkpoint_stream(todo, specs, trust_pickle):
    """(row, spec, matrix) for every matrix of every checkpoint to compute, in order; (row, "end", error)
    closes each checkpoint, with the CheckpointError that interrupted it, if any."""
    for i, r in todo:
        error = None
        try:
            for spec, W in _matrices(r["ckpt"], specs, trust_pickle):
                yield i, spec, W
        except CheckpointError as e:
            error = e
        yield i, "end", error


def make_engine(opts: AnalyzeOptions, routes: dict[str, str] | None = None) -> SVDEngine:
    """The SVD engine of a run. `routes` (the store's `svd_routes`) are reused for their shapes, so every row of
    a store is computed by the routes it records, whatever the machine's cache says; only new shapes are
    measured. A store made with one pinned route ({"all": route}) keeps it."""
    routes = dict(routes or {})
    route = opts.svd_route
    if route == "auto" and "all" in routes:
        route = routes["all"]
    engine = SVDEngine(top=opts.topk, device=opts.device, route=route, recalibrate=opts.recalibrate)
    if route == "auto":
        engine.chosen.update(routes_by_shape(routes))
    return engine


def routes_by_shape(routes: dict[str, str]) -> dict[tuple[int, int], str]:
    out = {}
    for key, route in routes.items():
        m, _, n = key.partition("x")
        if m.isdigit() and n.isdigit():
            out[(int(m), int(n))] = route
    return out


def compute_rows(root, todo, specs, pairs, heads, opts, show_progress, routes=None):
    """Compute and write every row in `todo`; returns the SVD engine (for its route summary) and failures.

    The routes a row was computed with are recorded in the attrs before its `done` flag."""
    engine = make_engine(opts, routes)
    failures = []
    if not todo:
        return engine, failures
    compute = RowComputer(specs, pairs, opts.topk, heads, engine)
    bar = console.progress(transient=False) if show_progress else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("analyze", total=len(todo)) if bar else None
        if opts.workers > 1 or opts.dask:
            rows = _parallel_rows(todo, specs, pairs, heads, opts, compute, bar)
        else:
            rows = _serial_rows(todo, specs, compute, opts, bar)
        for i, r, result in rows:
            if isinstance(result, CheckpointError):
                if opts.strict:
                    raise result
                console.warn(f"skipping {result.message}", kind="skipped")
                failures.append({"source": r["source"], "checkpoint": r["checkpoint"], "reason": result.message})
            else:
                if result.nonfinite:
                    console.warn(
                        f"{r['ckpt'].path}: NaN/Inf weights in {', '.join(result.nonfinite[:3])}"
                        + (" ..." if len(result.nonfinite) > 3 else "")
                        + "; their metrics are recorded as NaN",
                        kind="NaN/Inf warnings",
                    )
                record_routes(root, engine.summary())
                fp = r.get("fingerprint", (-1, -1))
                write_row(root, i, r["step"], r["checkpoint"], r["source"], result, specs, fp)
            if bar:
                bar.update(task, advance=1, description=f"analyze {r['checkpoint']}")
    return engine, failures


def _serial_rows(todo, specs, compute, opts, bar):
    """One process: the SVDs use every core's BLAS threads while a thread reads the next matrices."""
    stream = prefetch(_checkpoint_stream(todo, specs, opts.trust_pickle), PREFETCH_BYTES)
    matrix_task = bar.add_task("matrices", total=len(specs)) if bar else None

    def one_checkpoint():
        for _, spec, payload in stream:
            if spec == "end":
                if payload is not None:
                    raise payload
                return
            yield spec, payload

    def tick(spec):
        if bar:
            bar.update(matrix_task, advance=1, description=f"[dim]{spec.name}")

    for i, r in todo:
        if bar:
            bar.reset(matrix_task, total=len(specs))
        try:
            result = compute(one_checkpoint(), on_matrix=tick)
        except CheckpointError as e:
            result = e
        yield i, r, result
    if bar:
        bar.remove_task(matrix_task)


def _worker_init(threads: int):
    import torch

    torch.set_num_threads(threads)


def _worker_row(ckpt, specs, pairs, heads, opts, routes):
    engine = make_engine(opts, routes)
    compute = RowComputer(specs, pairs, opts.topk, heads, engine)
    try:
        return compute(_matrices(ckpt, specs, opts.trust_pickle))
    except CheckpointError as e:
        return e


@contextlib.contextmanager
def _executor(opts: AnalyzeOptions):
    """A concurrent.futures Executor over processes: local, or a Dask cluster (`--dask local|ADDRESS`)."""
    if opts.dask:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SpecdynError("--dask needs Dask: pip install 'specdyn[dask]'") from None
        if opts.dask == "local":
            # Dask's nanny sets OMP/MKL/OpenBLAS threads to 1 per worker: workers x threads <= cores.
            cluster = LocalCluster(n_workers=opts.workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        else:
            cluster, client = None, Client(opts.dask)
        try:
            yield client.get_executor()
        finally:
            client.close()
            if cluster:
                cluster.close()
        return
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // opts.workers)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(threads) for k in saved})  # inherited by the spawned workers before numpy loads
    try:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(opts.workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as ex:
            yield ex
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parallel_rows(todo, specs, pairs, heads, opts, compute, bar):
    """Checkpoints in parallel processes, each computing whole rows; this process writes them in order.

    Rows are computed here until one succeeds, so that every new shape's route is measured once, here, and the
    workers all use those routes (workers measuring on their own could pick different routes for one store)."""
    todo = list(todo)
    while todo:
        i, r = todo.pop(0)
        result = list(_serial_rows([(i, r)], specs, compute, opts, bar))[0][2]
        yield i, r, result
        if not isinstance(result, CheckpointError):
            break
    if not todo:
        return
    routes = compute.engine.summary()
    with _executor(opts) as ex:
        futures = [(i, r, ex.submit(_worker_row, r["ckpt"], specs, pairs, heads, opts, routes)) for i, r in todo]
        for i, r, f in futures:
            yield i, r, f.result()
