"""`specdyn analyze`: from checkpoint series to a zarr spectral store, incrementally and resumably.

The plan for a store: its rows are the union of the checkpoints it already holds and the newly selected ones,
sorted by step. Rows already done are never recomputed; when new checkpoints only extend the series, rows are
appended in place, otherwise the store is rebuilt beside itself (done rows copied, not recomputed) and swapped in.
Killing the process at any moment leaves rows marked undone, which the next run computes.
"""

import contextlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


from specdyn import console
from specdyn.errors import EXIT_NO_CHECKPOINTS, SpecdynError
from specdyn.io import Checkpoint, CheckpointError, CheckpointReader, discover, number_by_name
from specdyn.io.prefetch import prefetch
from specdyn.selection import subsample
from specdyn.spectral.matrices import MatrixSpec, select_matrices
from specdyn.spectral.pairs import find_pairs, read_pairs_file
from specdyn.spectral.rows import RowComputer
from specdyn.spectral.svd import SVDEngine
from specdyn.store import LOCK_NAME, default_store, is_store, locked
from specdyn.store.layout import create_layout, pairs_of, read_attrs, specs_of
from specdyn.store.writing import (
    derive,
    derived_marker,
    done_keys,
    open_root,
    rebuild,
    recover,
    recoverable,
    remove_store,
    resize_rows,
    stored_rows,
    update_attrs,
    write_identity,
    write_row,
    write_session,
)

PREFETCH_BYTES = 512 << 20  # matrices read ahead of the SVDs, overlapping I/O with compute
HEAD_KEYS = ("n_heads", "num_heads", "num_attention_heads", "n_head", "nhead", "num_heads_attn")


@dataclass
class AnalyzeOptions:
    top: int = 64
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    every: int | None = None
    log_spaced: int | None = None
    steps: str | None = None
    order: str = "step"
    pairs_file: str | None = None
    heads: int | None = None
    device: str = "cpu"
    svd_route: str = "auto"
    recalibrate: bool = False
    workers: int = 1
    dask: str | None = None  # "local" or a scheduler address
    strict: bool = False
    trust_pickle: bool = False
    overwrite: bool = False

    def content_options(self) -> dict:
        """Options that change what a row holds: a rerun must use the same ones."""
        return {"top": self.top, "include": list(self.include), "exclude": list(self.exclude), "order": self.order}


def analyze(run_dirs: list[Path], out: Path | None = None, options: AnalyzeOptions | None = None, show_progress=True) -> dict:
    """Analyze one series (from one or more run dirs, merged by step) into one store; returns a summary dict."""
    opts = options or AnalyzeOptions()
    run_dirs = [Path(d).resolve() for d in run_dirs]
    for d in run_dirs:
        if not d.is_dir():
            raise SpecdynError(f"{d}: no such directory; pass a run directory that holds checkpoints")
    store = Path(out) if out else default_store(run_dirs[0])
    t0 = time.perf_counter()
    if opts.overwrite:
        remove_store(store)
    elif store.exists() and any(p.name != LOCK_NAME for p in store.iterdir()) and not is_store(store) and not recoverable(store):
        raise SpecdynError(f"{store}: exists and is not a specdyn store; choose another --out")
    recover(store)
    with locked(store):
        return _analyze_locked(run_dirs, store, opts, show_progress, t0)


def _analyze_locked(run_dirs, store, opts, show_progress, t0) -> dict:
    existing = is_store(store)
    attrs = read_attrs(open_root(store)) if existing else {}
    if existing:
        _check_options(store, attrs, opts)
    sources = _sources(store, run_dirs, attrs)
    source_of = {d: sources.index(_rel(store, d)) for d in run_dirs}
    found = []
    for run_dir in run_dirs:
        ckpts = discover(run_dir, order=opts.order)
        if opts.order == "name":
            ckpts = number_by_name(ckpts)
        found += [(source_of[run_dir], c) for c in ckpts]
    selected = subsample(sorted(found, key=lambda sc: sc[1].step), opts.every, opts.log_spaced, opts.steps, key=lambda sc: sc[1].step)
    _check_duplicate_steps([c for _, c in selected])

    stored = stored_rows(open_root(store)) if existing else []
    stored_done = {(r["source"], r["checkpoint"]) for r in stored if r["done"]}
    new = [(src, c) for src, c in selected if (src, c.relpath) not in stored_done]
    specs, pairs, heads, valid, skipped = _validate(store, new, attrs, opts, existing)
    rows = [r for r in stored if r["done"]]
    rows += [{"source": src, "checkpoint": c.relpath, "step": c.step, "done": False, "ckpt": c} for src, c in valid]
    rows.sort(key=lambda r: (r["step"], r["source"], r["checkpoint"]))
    in_place = all(r["row"] == i for i, r in enumerate(rows) if r["done"])

    with contextlib.ExitStack() as locks, write_session(store, lock=False) as root:  # the session closes first
        if not existing:
            create_layout(root, specs, pairs, opts.top, {"options": opts.content_options(), "heads": heads, "pairs_file": opts.pairs_file})
        if not in_place:
            root, new_lock = rebuild(store, root, rows, specs, pairs, opts.top)
            locks.callback(new_lock.close)
        resize_rows(root, len(rows))
        todo = [(i, r) for i, r in enumerate(rows) if not r["done"]]
        for i, r in todo:  # identities first, so `specdyn info` during a long analyze shows what is coming
            write_identity(root, i, r["step"], r["checkpoint"], r["source"])
        engine, failures = _compute(root, todo, specs, pairs, heads, opts, show_progress)
        skipped += failures
        if todo or not in_place or attrs.get("derived") != derived_marker(root):
            derive(root)
        now_done = done_keys(root)
        previous = [s for s in attrs.get("skipped", []) if (s["source"], s["checkpoint"]) not in now_done and s not in skipped]
        update_attrs(
            root,
            sources=[{"run_dir": s} for s in sources],
            skipped=previous + skipped,
            svd_routes={**attrs.get("svd_routes", {}), **engine.summary()},
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
    return {
        "store": str(store),
        "checkpoints": len(now_done),
        "computed": len(todo) - len(failures),
        "skipped": skipped,
        "matrices": len(specs),
        "pairs": len(pairs),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --------------------------------------------------------------------------------------------- planning


def _rel(store: Path, run_dir: Path) -> str:
    """Run dirs are recorded relative to the store's parent, so a run folder can move with its store."""
    return os.path.relpath(run_dir, store.resolve().parent)


def _sources(store: Path, run_dirs: list[Path], attrs: dict) -> list[str]:
    sources = [s["run_dir"] for s in attrs.get("sources", [])]
    for d in run_dirs:
        if _rel(store, d) not in sources:
            sources.append(_rel(store, d))
    return sources


def _check_duplicate_steps(ckpts: list[Checkpoint]) -> None:
    seen = {}
    for c in ckpts:
        if c.step in seen:
            raise SpecdynError(
                f"{c.path}: step {c.step} also belongs to {seen[c.step].path}; a series needs one checkpoint per step "
                "(analyze the run dirs into separate stores, or narrow the selection with --steps)"
            )
        seen[c.step] = c


def _check_options(store: Path, attrs: dict, opts: AnalyzeOptions) -> None:
    before = attrs.get("options", {})
    now = opts.content_options()
    diff = [k for k in now if k in before and before[k] != now[k]]
    # --pairs and --heads may be left out on a rerun (the store keeps them), but not changed
    given = {"pairs_file": opts.pairs_file, "heads": opts.heads}
    diff += [k for k, v in given.items() if v is not None and attrs.get(k) != v]
    before = {**before, **{k: attrs.get(k) for k in given}}
    now = {**now, **given}
    if diff:
        k = diff[0]
        raise SpecdynError(
            f"{store}: made with --{k.replace('_file', '').replace('_', '-')} {before[k]!r}, now {now[k]!r}; "
            "use the same options, a new --out, or --overwrite"
        )


def _shapes(reader: CheckpointReader) -> dict[str, tuple[int, ...]]:
    return {name: tuple(reader.shape(name)) for name in reader.names()}


def _heads(opts: AnalyzeOptions, reader: CheckpointReader) -> int | None:
    if opts.heads:
        return opts.heads
    meta = reader.metadata() or {}
    for section in (meta.get("config") or {}, meta.get("hyper_parameters") or {}, meta):
        if isinstance(section, dict):
            for key in HEAD_KEYS:
                if isinstance(section.get(key), int):
                    return section[key]
    return None


def _validate(store, new, attrs, opts, existing):
    """Open every new checkpoint's header: skip unreadable ones, and refuse a change of architecture."""
    skipped, valid = [], []
    specs = pairs = heads = None
    if existing:
        root = open_root(store)
        specs, pairs = specs_of(root), pairs_of(root)
        heads = attrs.get("heads")
    for src, c in new:
        try:
            with CheckpointReader(c, trust_pickle=opts.trust_pickle) as reader:
                got = select_matrices(_shapes(reader), opts.include, opts.exclude, where=str(c.path))
                if specs is None:
                    specs = got
                    heads = _heads(opts, reader)
                    pairs = read_pairs_file(opts.pairs_file, specs, heads) if opts.pairs_file else find_pairs(specs, heads)
        except CheckpointError as e:
            if opts.strict:
                raise
            console.warn(f"skipping {e.message}")
            skipped.append({"source": src, "checkpoint": c.relpath, "reason": e.message})
            continue
        _check_architecture(specs, got, c)
        valid.append((src, c))
    if specs is None:
        raise SpecdynError(
            f"{store}: no readable checkpoint to analyze"
            + (f" ({len(skipped)} skipped, see the warnings above)" if skipped else ""),
            code=EXIT_NO_CHECKPOINTS,
        )
    return specs, pairs, heads, valid, skipped


def _check_architecture(reference: list[MatrixSpec], got: list[MatrixSpec], c: Checkpoint) -> None:
    ref = {s.name: s.original_shape for s in reference}
    now = {s.name: s.original_shape for s in got}
    for name, shape in ref.items():
        if name not in now:
            raise SpecdynError(f"{c.path}: architecture change: tensor {name!r} {list(shape)} is missing in this checkpoint")
        if now[name] != shape:
            raise SpecdynError(
                f"{c.path}: architecture change: tensor {name!r} has shape {list(now[name])}, earlier checkpoints {list(shape)}"
            )
    extra = [n for n in now if n not in ref]
    if extra:
        raise SpecdynError(f"{c.path}: architecture change: new tensor {extra[0]!r} not in earlier checkpoints")


# --------------------------------------------------------------------------------------------- computing


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


def _compute(root, todo, specs, pairs, heads, opts, show_progress):
    """Compute and write every row in `todo`; returns the SVD engine (for its route summary) and failures."""
    engine = SVDEngine(top=opts.top, device=opts.device, route=opts.svd_route, recalibrate=opts.recalibrate)
    failures = []
    if not todo:
        return engine, failures
    compute = RowComputer(specs, pairs, opts.top, heads, engine)
    bar = console.progress(transient=False) if show_progress else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("analyze", total=len(todo)) if bar else None
        if opts.workers > 1 or opts.dask:
            rows = _parallel_rows(todo, specs, pairs, heads, opts)
        else:
            rows = _serial_rows(todo, specs, compute, opts, bar)
        for i, r, result in rows:
            if isinstance(result, CheckpointError):
                if opts.strict:
                    raise result
                console.warn(f"skipping {result.message}")
                failures.append({"source": r["source"], "checkpoint": r["checkpoint"], "reason": result.message})
            else:
                if result.nonfinite:
                    console.warn(
                        f"{r['ckpt'].path}: NaN/Inf weights in {', '.join(result.nonfinite[:3])}"
                        + (" ..." if len(result.nonfinite) > 3 else "")
                        + "; their metrics are recorded as NaN"
                    )
                write_row(root, i, r["step"], r["checkpoint"], r["source"], result, specs)
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


def _worker_row(ckpt, specs, pairs, heads, opts):
    engine = SVDEngine(top=opts.top, device=opts.device, route=opts.svd_route, recalibrate=opts.recalibrate)
    compute = RowComputer(specs, pairs, opts.top, heads, engine)
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
            raise SpecdynError("--dask needs Dask: pip install 'specdyn[dask]'")
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


def _parallel_rows(todo, specs, pairs, heads, opts):
    """Checkpoints in parallel processes, each computing whole rows; this process writes them in order."""
    with _executor(opts) as ex:
        futures = [(i, r, ex.submit(_worker_row, r["ckpt"], specs, pairs, heads, opts)) for i, r in todo]
        for i, r, f in futures:
            yield i, r, f.result()
