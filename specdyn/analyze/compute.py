"""Computing rows: every matrix's SVD and measurements, in this process (BLAS threads on every core, the next
matrices read ahead) or over processes or a Dask cluster. In parallel the unit of work is a group of matrices of
one checkpoint, so one checkpoint spreads over every worker; workers write their matrices' chunks into the store
when they see it (shared storage) and send them back otherwise; this process assembles each row (metrics,
alignment) once all its matrices are in and marks it done."""

import contextlib
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from specdyn import console
from specdyn.analyze.options import AnalyzeOptions
from specdyn.errors import SpecdynError
from specdyn.io import Checkpoint, CheckpointError, CheckpointReader
from specdyn.io.buffers import POOL
from specdyn.io.prefetch import prefetch
from specdyn.io.safeload import unreadable
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.rows import MatrixResult, RowComputer
from specdyn.spectral.svd import ROUTES, SVDEngine, all_finite
from specdyn.store.writing import (
    RowWriter,
    open_for_matrices,
    read_matrix,
    record_routes,
    shared_marker,
    write_matrix,
)

# Matrices read ahead of the SVDs, overlapping I/O with compute. Reading one takes a few percent of its SVD, so a
# short window suffices, and it keeps the read buffers few enough to be reused (io.buffers) rather than fresh.
PREFETCH_BYTES = 128 << 20
# Singular vectors a row holds in memory for its alignment pairs before further matrices are written through.
SPILL_BYTES = 256 << 20
# Singular vectors of unchanged matrices (an adapter series' base matrices) held for reuse; beyond this they are
# read back from the row that first stored them.
UNCHANGED_BYTES = 256 << 20


class Unchanged:
    """A matrix that is its base model's as it is (an adapter leaves it alone): computed once per run, from `W`
    the first time; later rows reuse that result and the matrix is not read again (W None)."""

    def __init__(self, W):
        self.W = W
        self.nbytes = getattr(W, "nbytes", 0)


class UnchangedResults:
    """The results of an adapter series' unchanged matrices: computed in the first row that needs them, reused by
    every later row (their spectra held up to UNCHANGED_BYTES, else read back from that first row)."""

    def __init__(self, root):
        self.root, self.results, self.rows, self.held = root, {}, {}, 0

    def __contains__(self, name: str) -> bool:
        return name in self.results

    def result(self, compute: RowComputer, i: int, j: int, spec: MatrixSpec, W) -> MatrixResult:
        known = self.results.get(spec.name)
        if known is None:
            res = compute.matrix(j, spec, W)
            size = res.spectrum.U.nbytes + res.spectrum.V.nbytes
            keep = self.held + size <= UNCHANGED_BYTES
            self.held += size if keep else 0
            self.results[spec.name] = MatrixResult(j, res.spectrum if keep else None, res.metrics, res.slices,
                                                   res.finite)  # fmt: skip
            self.rows[spec.name] = i
            return res
        sp = known.spectrum if known.spectrum is not None else read_matrix(self.root, self.rows[spec.name], spec.name)
        return MatrixResult(j, sp, dict(known.metrics), known.slices, known.finite)

    def forget(self, i: int) -> None:
        """Row i failed part-way: what it computed is not in the store to be read back."""
        for name in [n for n, row in self.rows.items() if row == i]:
            del self.results[name], self.rows[name]


def read_spec(reader: CheckpointReader, spec: MatrixSpec):
    """One matrix as the SVDs take it: its tensor (only its expert's block, for a matrix cut from a stack)."""
    return spec.flatten(spec.take(reader.array(spec.tensor, spec.block)), contiguous=False)


def _matrices(ckpt: Checkpoint, specs: list[MatrixSpec], trust_pickle: bool, known=()):
    """Yield (spec, float32 matrix) for one checkpoint, reading tensor by tensor; an Unchanged matrix instead
    where the checkpoint holds its base's (read only when its result is not `known` yet)."""
    with CheckpointReader(ckpt, trust_pickle=trust_pickle) as reader:
        for spec in specs:
            if reader.unchanged(spec.tensor):
                read = spec.name not in known
                yield spec, Unchanged(read_spec(reader, spec) if read else None)
            else:
                yield spec, read_spec(reader, spec)


def _checkpoint_stream(todo, specs, trust_pickle, known=()):
    """(row, spec, matrix) for every matrix of every checkpoint to compute, in order; (row, "end", error)
    closes each checkpoint, with the CheckpointError that interrupted it, if any."""
    for i, r in todo:
        error = None
        try:
            for spec, W in _matrices(r["ckpt"], specs, trust_pickle, known):
                yield i, spec, W
        except CheckpointError as e:
            error = e
        except MemoryError as e:  # a tensor too large to allocate: this checkpoint is skipped, with the reason
            error = unreadable(r["ckpt"].path, e)
        yield i, "end", error


def make_engine(opts: AnalyzeOptions, routes: dict[str, str] | None = None) -> SVDEngine:
    """The SVD engine of a run. `routes` (the store's `svd_routes`) are reused for their shapes, so every row of
    a store is computed by the routes it records, whatever the machine's cache says; only new shapes are
    measured. A store made with one pinned route ({"all": route}) keeps it."""
    routes = dict(routes or {})
    route = opts.svd_route
    if route == "auto" and routes.get("all") in ROUTES:
        route = routes["all"]
    engine = SVDEngine(top=opts.topk, device=opts.device, route=route, recalibrate=opts.recalibrate)
    if route == "auto":
        engine.chosen.update(routes_by_shape(routes))
        engine.fix()  # the store's rows were computed with these: they stay
    return engine


def routes_by_shape(routes: dict[str, str]) -> dict[tuple[int, int], str]:
    out = {}
    for key, route in routes.items():
        m, _, n = key.partition("x")
        if m.isdigit() and n.isdigit():
            out[(int(m), int(n))] = route
    return out


def compute_rows(root, todo, specs, pairs, heads, opts, show_progress, routes=None, relative=None):
    """Compute and write every row in `todo`; returns the SVD engine (for its route summary) and failures.

    The routes a row was computed with are recorded in the attrs before its `done` flag. `relative`: an
    `analyze.relative.BaseRelative` adding each row's arrays relative to the base model."""
    engine = make_engine(opts, routes)
    failures = []
    if not todo:
        return engine, failures
    compute = RowComputer(specs, pairs, opts.topk, heads, engine)
    writer = RowWriter(root, specs)
    bar = console.progress(transient=False) if show_progress else None
    with bar or contextlib.nullcontext(), _read_buffers():
        task = bar.add_task("analyze", total=len(todo)) if bar else None
        if opts.workers > 1 or opts.dask:
            rows = _parallel_rows(root, todo, specs, pairs, heads, opts, compute, bar, writer)
        elif engine.device.startswith("cuda"):
            rows = _device_rows(todo, specs, compute, opts, bar)
        else:
            rows = _serial_rows(todo, specs, compute, opts, bar, writer)
        for i, r, result in rows:
            if relative is not None and not isinstance(result, CheckpointError):
                try:
                    result.base = relative.row(r["ckpt"], result, _StoredSpectra(writer, i))
                except CheckpointError as e:
                    result = e
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
                engine.fix()  # rows are written with these routes: a re-check may no longer change them
                fp = r.get("fingerprint", (-1, -1))
                writer.write(i, r["step"], r["checkpoint"], r["source"], result, fp)
            if bar:
                bar.update(task, advance=1, description=f"analyze {r['checkpoint']}")
    return engine, failures


@contextlib.contextmanager
def _read_buffers():
    """The read buffers analyze reuses are freed when it ends (a long-lived process does not keep them)."""
    try:
        yield
    finally:
        POOL.clear()


def _serial_rows(todo, specs, compute, opts, bar, writer):
    """One process: the SVDs use every core's BLAS threads while a thread reads the next matrices. A row's
    spectra are held for its alignment pairs until SPILL_BYTES of them are held; later ones go to the store as
    they are computed and are read back for the pairs (on a 7B model they are 650 MB per row)."""
    unchanged = UnchangedResults(writer.root)
    stream = prefetch(_checkpoint_stream(todo, specs, opts.trust_pickle, unchanged), PREFETCH_BYTES)
    matrix_task = bar.add_task("matrices", total=len(specs)) if bar else None

    def one_checkpoint():
        for _, spec, payload in stream:
            if spec == "end":
                if payload is not None:
                    raise payload
                return
            yield spec, payload

    for i, r in todo:
        if bar:
            bar.reset(matrix_task, total=len(specs))
        results, held = [], 0
        try:
            for j, (spec, W) in enumerate(one_checkpoint()):
                if isinstance(W, Unchanged):
                    res = unchanged.result(compute, i, j, spec, W.W)
                else:
                    res = compute.matrix(j, spec, W)
                size = res.spectrum.U.nbytes + res.spectrum.V.nbytes
                if held + size > SPILL_BYTES:
                    writer.matrix(i, spec.name, res.spectrum)
                    res.spectrum = None
                else:
                    held += size
                results.append(res)
                if bar:
                    bar.update(matrix_task, advance=1, description=f"[dim]{spec.name}")
            result = compute.assemble(results, _StoredSpectra(writer, i))
        except CheckpointError as e:
            result = e
            unchanged.forget(i)
        yield i, r, result
    if bar:
        bar.remove_task(matrix_task)


def device_batches(specs: list[MatrixSpec], batch_size) -> list[list[int]]:
    """Spec indices grouped by matrix shape (first-seen order), each group cut to `batch_size(shape)`: the
    batches of one checkpoint that a device decomposes in one call each."""
    by_shape: dict[tuple, list[int]] = {}
    for j, spec in enumerate(specs):
        by_shape.setdefault(spec.shape, []).append(j)
    out = []
    for shape, idx in by_shape.items():
        b = max(1, batch_size(shape))
        out += [idx[k : k + b] for k in range(0, len(idx), b)]
    return out


def _batch_stream(todo, specs, batches, trust_pickle):
    """(row, indices, matrices) for every batch of every checkpoint; (row, None, error) closes a checkpoint."""
    for i, r in todo:
        error = None
        try:
            with CheckpointReader(r["ckpt"], trust_pickle=trust_pickle) as reader:
                for idx in batches:
                    yield i, idx, [read_spec(reader, specs[j]) for j in idx]
        except CheckpointError as e:
            error = e
        except MemoryError as e:  # a tensor too large to allocate: this checkpoint is skipped, with the reason
            error = unreadable(r["ckpt"].path, e)
        yield i, None, error


def _device_rows(todo, specs, compute, opts, bar):
    """On a GPU: each checkpoint's same-shape matrices in batches (one batched eigh each), read ahead by a
    thread and uploaded through pinned memory while the previous batch computes (spectral.gpu.BatchedGram).
    Host memory holds the read-ahead budget plus two batches, whatever the checkpoint's size."""
    batcher = compute.engine.batcher()
    batches = device_batches(specs, batcher.batch_size)
    stream = prefetch(_batch_stream(todo, specs, batches, opts.trust_pickle), PREFETCH_BYTES)
    for i, r in todo:
        state = {"results": [], "held": [], "error": None}
        for spectra in batcher.run(_finite_batches(stream, specs, compute, state)):
            for (j, W), sp in zip(state["held"].pop(0), spectra):
                state["results"].append(compute.matrix(j, specs[j], W, sp))
        yield i, r, state["error"] or compute.assemble(state["results"])


def _finite_batches(stream, specs, compute, state):
    """One checkpoint's batches as read, up to its end marker; NaN/Inf matrices are taken out of the batch and
    given the engine's NaN spectrum at once. `state` collects results, the batches in flight and the error."""
    for _, idx, payload in stream:
        if idx is None:
            state["error"] = payload
            return
        keep = []
        for j, W in zip(idx, payload):
            if all_finite(W):
                keep.append((j, W))
            else:
                state["results"].append(compute.matrix(j, specs[j], W))
        if keep:
            state["held"].append(keep)
            yield [W for _, W in keep]


def _worker_init(threads: int, parent: int | None = None):
    if parent is not None:
        exit_with_parent(parent)
    import torch

    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int) -> None:
    """Make this worker process die with the analyze process that started it, even when that one is killed (-9),
    instead of living on with the caller's pipes: on Linux the kernel sends SIGKILL when the parent dies
    (prctl PR_SET_PDEATHSIG), elsewhere a thread polls for the parent to be gone."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:  # the parent died before the call armed it
                os._exit(1)
            return
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="specdyn-parent-watch", daemon=True).start()


# ------------------------------------------------------------------------------- work units below a checkpoint

# Units per worker thread kept available: with fewer checkpoints to compute than that, each checkpoint is split
# into groups of matrices (balanced by cost), so one large checkpoint spreads over every worker.
UNITS_PER_SLOT = 2
_ENGINES: dict = {}  # per worker process: one engine per option set, so routes are measured once per process


def units(specs: list[MatrixSpec], n: int) -> list[list[int]]:
    """Split the specs into at most n groups of about equal SVD cost (m n min(m, n)), each in spec order."""
    n = max(1, min(n, len(specs)))
    loads, groups = [0.0] * n, [[] for _ in range(n)]
    for j in sorted(range(len(specs)), key=lambda j: -_cost(specs[j])):
        g = loads.index(min(loads))
        groups[g].append(j)
        loads[g] += _cost(specs[j])
    return [sorted(g) for g in groups if g]


def _cost(spec: MatrixSpec) -> float:
    m, n = spec.shape
    return float(m) * n * min(m, n)


def _engine(opts: AnalyzeOptions, routes: dict[str, str]) -> SVDEngine:
    """The run's engine with the coordinator's routes (make_engine), one per worker process and option set."""
    key = (opts.topk, opts.device, opts.svd_route, opts.recalibrate, tuple(sorted(routes.items())))
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(opts, routes)
    return _ENGINES[key]


@contextlib.contextmanager
def _blas_threads(threads: int | None):
    """Limit BLAS/OpenMP and torch threads inside a task (a Dask worker running several tasks at once)."""
    if not threads:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    with contextlib.suppress(ImportError):  # load scipy's own OpenBLAS first, so that the limit reaches it
        import scipy.linalg.lapack  # noqa: F401
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def _dask_task_threads(host_threads: dict | None) -> int | None:
    """On a Dask worker: cores / (task threads of every Dask worker on this host), so that threads per task x
    tasks at once never exceed the machine's cores. None elsewhere (local workers get it from their pool)."""
    if not host_threads:
        return None
    from distributed import get_worker

    n = host_threads.get(_host(get_worker().address), 1)
    return max(1, (os.cpu_count() or 1) // n)


def _host(address: str) -> str:
    """'tcp://10.0.0.2:40123' -> '10.0.0.2' (as the scheduler reports workers)."""
    return address.split("://")[-1].rsplit(":", 1)[0]


def _unit_task(ckpt, row: int, indices: list[int], specs, pairs, heads, opts, routes, store: str, token: str, hosts):
    """Worker side of one unit: read these matrices of one checkpoint, compute each; write their chunks into the
    store when this worker sees it, else return them. Returns (results, routes) or the CheckpointError."""
    with _blas_threads(_dask_task_threads(hosts)):
        engine = _engine(opts, routes)
        compute = RowComputer(specs, pairs, opts.topk, heads, engine)
        root = open_for_matrices(store, token) if token else None
        out = []
        try:
            with CheckpointReader(ckpt, trust_pickle=opts.trust_pickle) as reader:
                for j in indices:
                    spec = specs[j]
                    res = compute.matrix(j, spec, read_spec(reader, spec))
                    if root is not None:
                        write_matrix(root, row, spec.name, res.spectrum)
                        res.spectrum = None
                    out.append(res)
        except CheckpointError as e:
            return e
        except MemoryError as e:
            return unreadable(ckpt.path, e)
        finally:
            POOL.clear()  # a Dask worker outlives the run: it keeps no read buffers between tasks
        return out, dict(engine.chosen)


@contextlib.contextmanager
def _executor(opts: AnalyzeOptions):
    """(Executor, worker threads, {host: Dask threads}) over processes: local, or a Dask cluster."""
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
            cluster = None
            try:
                client = Client(opts.dask, timeout=30)
            except OSError as e:
                raise SpecdynError(f"--dask {opts.dask}: cannot reach the Dask scheduler ({e})") from None
        try:
            client.wait_for_workers(1, timeout=120)
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            hosts: dict[str, int] = {}  # machine -> Dask threads on it (tasks that may run there at once)
            for addr, w in client.scheduler_info(n_workers=-1)["workers"].items():
                hosts[_host(addr)] = hosts.get(_host(addr), 0) + int(w.get("nthreads", 1))
            yield client.get_executor(), sum(int(w.get("nthreads", 1)) for w in workers), hosts
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
        with ProcessPoolExecutor(
            opts.workers, mp_context=ctx, initializer=_worker_init, initargs=(threads, os.getpid())
        ) as ex:
            yield ex, opts.workers, None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parallel_rows(root, todo, specs, pairs, heads, opts, compute, bar, writer):
    """Units of matrices in parallel processes (workers write their chunks into a store they see); a row is
    assembled here, and yielded for writing, once every matrix of it is in. Rows come in completion order.

    Rows are computed here until one succeeds, so that every new shape's route is measured once, here, and the
    workers all use those routes (workers measuring on their own could pick different routes for one store)."""
    todo = list(todo)
    while todo:
        i, r = todo.pop(0)
        result = list(_serial_rows([(i, r)], specs, compute, opts, bar, writer))[0][2]
        yield i, r, result
        if not isinstance(result, CheckpointError):
            break
    if not todo:
        return
    engine = compute.engine
    routes = engine.summary()
    store = str(_store_path(root))
    with _executor(opts) as (ex, slots, hosts), shared_marker(Path(store)) as token:
        n_units = max(1, -(-UNITS_PER_SLOT * slots // len(todo)))
        groups = units(specs, n_units)
        queue = [(i, r, g) for i, r in todo for g in groups]
        window = max(2 * slots, len(groups))  # units in flight: bounds what results hold in this process
        rows = {i: {"r": r, "left": len(groups), "results": [], "error": None} for i, r in todo}
        flying: dict = {}
        while queue or flying:
            while queue and len(flying) < window:
                i, r, g = queue.pop(0)
                args = (r["ckpt"], i, g, specs, pairs, heads, opts, routes, store, token, hosts)
                flying[ex.submit(_unit_task, *args)] = i
            finished, _ = wait(list(flying), return_when=FIRST_COMPLETED)
            for f in finished:
                i = flying.pop(f)
                state, out = rows[i], f.result()
                if isinstance(out, CheckpointError):
                    state["error"] = state["error"] or out
                else:
                    state["results"] += out[0]
                    engine.chosen.update(out[1])
                state["left"] -= 1
                if state["left"] == 0:
                    del rows[i]
                    yield i, state["r"], state["error"] or _assemble(compute, writer, i, state["results"])


def _assemble(compute: RowComputer, writer, i: int, results):
    """The row from its matrices' results; spectra the workers wrote are read back for the alignment pairs."""
    return compute.assemble(results, _StoredSpectra(writer, i))


class _StoredSpectra:
    """name -> Spectrum of row i, read back on demand (only pairs' matrices are read): from the store, or from
    the writer where it still holds it (a packed shard not yet complete)."""

    def __init__(self, writer, i: int):
        self.writer, self.i = writer, i

    def __getitem__(self, name: str):
        return self.writer.spectrum(self.i, name)


def _store_path(root) -> Path:
    return Path(root.store.root)
