"""One analyze run under the store's lock.

The plan for a store: its rows are the union of the checkpoints it already holds and the newly selected ones,
sorted by step. Rows already done are never recomputed; when new checkpoints only extend the series, rows are
appended in place, otherwise the store is rebuilt beside itself (done rows copied, not recomputed) and swapped in.
Killing the process at any moment leaves rows marked undone, which the next run computes.
"""

import contextlib
import time
from pathlib import Path

from specdyn.analyze.compute import compute_rows
from specdyn.analyze.options import AnalyzeOptions
from specdyn.analyze.plan import plan
from specdyn.errors import SpecdynError
from specdyn.store import LOCK_NAME, default_store, is_store, locked
from specdyn.store.layout import create_layout
from specdyn.store.writing import (
    derive,
    derived_marker,
    done_keys,
    rebuild,
    recover,
    recoverable,
    remove_store,
    resize_rows,
    source_docs,
    update_attrs,
    write_identity,
    write_session,
)


def analyze(
    run_dirs: list[Path], out: Path | None = None, options: AnalyzeOptions | None = None, show_progress=True
) -> dict:
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
    elif (
        store.exists()
        and any(p.name != LOCK_NAME for p in store.iterdir())
        and not is_store(store)
        and not recoverable(store)
    ):
        raise SpecdynError(f"{store}: exists and is not a specdyn store; choose another --out")
    recover(store)
    created = not store.exists()
    try:
        with locked(store):
            return _analyze_locked(run_dirs, store, opts, show_progress, t0)
    except SpecdynError:
        if created and store.is_dir() and {p.name for p in store.iterdir()} <= {LOCK_NAME}:
            (store / LOCK_NAME).unlink(missing_ok=True)  # refused before any work (a bad --pairs file): no store
            store.rmdir()
        raise


def _analyze_locked(run_dirs, store, opts, show_progress, t0) -> dict:
    p = plan(store, run_dirs, opts)
    with contextlib.ExitStack() as locks, write_session(store, lock=False) as root:  # the session closes first
        if not p.existing:
            attrs = {"options": opts.content_options(), "heads": p.heads, "pairs_file": opts.pairs_file, **p.structure}
            create_layout(root, p.specs, p.pairs, opts.topk, attrs)
        if not p.in_place:
            root, new_lock = rebuild(store, root, p.rows, p.specs, p.pairs, opts.topk)
            locks.callback(new_lock.close)
        resize_rows(root, len(p.rows))
        todo = [(i, r) for i, r in enumerate(p.rows) if not r["done"]]
        for i, r in todo:  # identities first, so `specdyn info` during a long analyze shows what is coming
            write_identity(root, i, r["step"], r["checkpoint"], r["source"])
        engine, failures = compute_rows(root, todo, p.specs, p.pairs, p.heads, opts, show_progress)
        skipped = p.skipped + failures
        if todo or not p.in_place or p.attrs.get("derived") != derived_marker(root):
            derive(root)
        now_done = done_keys(root)
        previous = [
            s for s in p.attrs.get("skipped", []) if (s["source"], s["checkpoint"]) not in now_done and s not in skipped
        ]
        update_attrs(
            root,
            sources=source_docs(p.attrs.get("sources", []), p.sources, p.rows),
            skipped=previous + skipped,
            svd_routes={**p.attrs.get("svd_routes", {}), **engine.summary()},
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
