"""One analyze run under the store's lock.

The plan for a store: its rows are the union of the checkpoints it already holds and the newly selected ones,
sorted by step. Rows already done are never recomputed (unless their file changed since); when new checkpoints
only extend the series, rows are appended in place, otherwise the store is rebuilt beside itself (done rows
copied, not recomputed) and swapped in. Killing the process at any moment leaves rows marked undone, which the
next run computes; everything that repairs a killed run (recovery of a swap, leftovers of a creation, zarr's
partial files) happens under the lock, so a second run can never undo the first one's work.
"""

import errno
import time
from contextlib import nullcontext
from pathlib import Path

from specdyn import console
from specdyn.analyze.compute import compute_rows
from specdyn.analyze.options import AnalyzeOptions
from specdyn.analyze.plan import plan
from specdyn.analyze.relative import BaseRelative
from specdyn.errors import EXIT_NO_CHECKPOINTS, SpecdynError
from specdyn.files import name_text
from specdyn.io.discovery import resolve_path
from specdyn.store import damage, default_store, locked
from specdyn.store.handle import Store
from specdyn.store.layout import add_base_arrays, read_attrs
from specdyn.store.locking import READ_ONLY, read_only_error
from specdyn.store.swap import real_store
from specdyn.store.writing import (
    create_store,
    derive,
    derived_marker,
    done_keys,
    forget_heavy_tail,
    open_for_writing,
    open_root,
    rebuild,
    remove_store,
    resize_rows,
    source_docs,
    update_attrs,
    write_identity,
    write_session,
)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def analyze(
    run_dirs: list[Path], out: Path | None = None, options: AnalyzeOptions | None = None, show_progress=True
) -> dict:
    """Analyze one series (from one or more run dirs, merged by step) into one store; returns a summary dict."""
    opts = options or AnalyzeOptions()
    run_dirs = [_run_dir(d) for d in run_dirs]
    store = _store_path(real_store(Path(out) if out else default_store(run_dirs[0]), named=out is not None))
    t0 = time.perf_counter()
    with console.warning_budget(), locked(store):
        progress = {}
        try:
            # repairs (a killed swap, leftovers, --repair's damaged rows) happen here, only under the lock
            st = open_for_writing(store, overwrite=opts.overwrite, repair=opts.repair)
            if st.is_specdyn:
                damage.refuse_damaged(store, st.root)
            return _analyze_locked(run_dirs, st, opts, show_progress, t0, progress)
        except damage.DECODE_ERRORS:
            found = damage.unreadable(open_root(store)) if Store(store).is_specdyn else {}
            if found:
                raise damage.damaged(store, damage.describe(found)) from None
            raise
        except OSError as e:
            if e.errno in NO_SPACE:
                raise SpecdynError(_no_space(store, progress)) from None
            if e.errno in READ_ONLY:
                raise read_only_error(store, e) from None
            raise


def _run_dir(d) -> Path:
    path = resolve_path(d)
    if path.is_file():
        raise SpecdynError(f"{d} is a file; pass the run directory that holds the checkpoint series")
    if not path.is_dir():
        raise SpecdynError(f"{path}: no such directory; pass a run directory that holds checkpoints")
    return path


def _store_path(store: Path) -> Path:
    resolved = resolve_path(store)
    if resolved.exists() and not resolved.is_dir():
        raise SpecdynError(f"{store} is a file, not a store folder; choose another --out")
    return store


def _no_space(store: Path, progress: dict) -> str:
    try:
        done = len(done_keys(open_root(store)))
    except Exception:  # a store whose creation ran out of space: nothing done
        done = 0
    need = max(progress.get("rows", 0) - done, 0) * progress.get("row_bytes", 0)
    left = f" (at most {_size(need)} more needed, uncompressed)" if need else ""
    return (
        f"{store}: no space left on the device{left}; the {done} rows done are kept: free space (or move the "
        "store) and rerun to finish"
    )


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _row_bytes(p, top: int) -> int:
    """Bytes one row adds, uncompressed (an upper bound for the space a row needs)."""
    per_matrix = sum(s.k * 8 + (s.shape[0] + s.shape[1]) * min(s.k, top) * 4 for s in p.specs)
    return per_matrix + len(p.specs) * (12 * 8 + top * 4) + len(p.pairs) * (top * 4 + 8) + 64


def _analyze_locked(run_dirs, st, opts, show_progress, t0, progress) -> dict:
    store = st.path
    p = plan(st, run_dirs, opts)
    _check_routes(store, p, opts)
    progress.update(rows=len(p.rows), row_bytes=_row_bytes(p, opts.topk))
    if not p.existing:
        attrs = {
            "options": opts.content_options(),
            "heads": p.heads,
            "pairs_file": opts.pairs_file,
            "skipped_tensors": p.skipped_tensors,
            **p.structure,
            **({"base": p.base_doc} if p.base is not None else {}),
        }
        st = create_store(store, p.specs, p.pairs, opts.topk, attrs)
    with write_session(st, lock=False) as root:
        if p.base is not None:
            add_base_arrays(root, p.base_doc["epsilon"])
        if not p.in_place:
            root = rebuild(store, root, p.rows, p.specs, p.pairs, opts.topk)
        resize_rows(root, len(p.rows))
        todo = [(i, r) for i, r in enumerate(p.rows) if not r["done"]]
        done_flags = root["done"][:]
        for i, _ in todo:  # a row about to be renamed or recomputed is undone first
            if done_flags[i]:
                root["done"][i] = False
        for i, r in todo:  # identities first, so `specdyn info` during a long analyze shows what is coming
            write_identity(root, i, r["step"], r["checkpoint"], r["source"])
        # where the rows' checkpoints are, before any row is done: readers of a killed run's rows need it
        update_attrs(root, sources=source_docs(p.attrs.get("sources", []), p.sources, p.rows))
        forget_heavy_tail(root, [i for i, _ in todo])
        if p.existing and not opts.repair:
            lost = damage.missing_chunks(root, root["done"][:])
            if lost:
                console.warn(f"{store}: chunks of done rows are missing: {damage.describe(lost)}; {damage.REPAIR}")
        routes = p.attrs.get("svd_routes", {})
        scratch = Path(store).absolute().parent / f".{Path(store).name}.base-vectors"  # bases past BASES_BYTES
        with BaseRelative(p.base, p.specs, p.base_doc, opts.trust_pickle, scratch) if p.base else nullcontext() as rel:
            engine, failures = compute_rows(root, todo, p.specs, p.pairs, p.heads, opts, show_progress, routes, rel)
        # reasons name files; one that is not UTF-8 is stored (and printed as JSON) with \xHH, as its name is
        skipped = [{**s, "reason": name_text(s["reason"])} for s in p.skipped + failures]
        stale = p.attrs.get("derived") != derived_marker(root) or read_attrs(root).get("unfilled")
        if todo or not p.in_place or stale:
            derive(root)
        now_done = done_keys(root)
        previous = [
            s for s in p.attrs.get("skipped", []) if (s["source"], s["checkpoint"]) not in now_done and s not in skipped
        ]
        update_attrs(
            root,
            sources=source_docs(p.attrs.get("sources", []), p.sources, p.rows),
            skipped=previous + skipped,
            skipped_tensors=p.skipped_tensors,
            svd_routes={**routes, **engine.summary()},
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
    if not p.existing and not now_done:  # every checkpoint failed: a first run leaves no store (docs/store.md)
        remove_store(Store(store, "a"))
        first = skipped[0]["reason"] if skipped else "no checkpoint was analyzed"
        raise SpecdynError(
            f"{store}: no checkpoint could be analyzed ({len(skipped)} skipped; the first: {first})",
            code=EXIT_NO_CHECKPOINTS,
        )
    return {
        "store": str(store),
        "checkpoints": len(now_done),
        "computed": len(todo) - len(failures),
        "skipped": skipped,
        "matrices": len(p.specs),
        "pairs": len(p.pairs),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _check_routes(store: Path, p, opts: AnalyzeOptions) -> None:
    """A pinned --svd-route must be the route the store's rows were computed with (a store is one computation)."""
    routes = p.attrs.get("svd_routes") or {}
    if opts.svd_route == "auto" or not p.existing or not routes:
        return
    if any(r["done"] for r in p.rows):
        other = sorted({r for r in routes.values() if r != opts.svd_route})
        if other:
            raise SpecdynError(
                f"{store}: its rows were computed with SVD route {other[0]!r}, not {opts.svd_route!r}; rerun "
                "without --svd-route (the store's routes are reused), or with --overwrite"
            )
