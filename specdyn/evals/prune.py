"""`prune-eval`: the loss of low-rank pruned models over training (docs/method.md 1.9, the paper's Fig. 4).

For each analyzed checkpoint: the full model; every matrix but the final layer keeping its top ceil(f k)
singular directions ("top_kept", the paper's pruned_bot); keeping the other k - ceil(f k) ("bottom_kept",
pruned_top); BatchNorm re-estimated after pruning. Singular vectors come from the store when it holds enough of
them, else from one SVD of the checkpoint's matrix (never more than one per matrix and checkpoint). Results go
to `evals/prune` in the store (docs/store.md), one row per checkpoint with done flags, so a killed run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.evals.lowrank import keep_rank
from specdyn.evals.options import PruneOptions
from specdyn.evals.spectra import spectrum_for
from specdyn.evals.taskload import Endpoint, check_same_architecture, match_state, read_state, resolve_task
from specdyn.evals.variants import SPLITS, as_array, low_rank_pair, metric_names, progress, pruned_matrices, run_variant
from specdyn.store import results

GROUP = "evals/prune"
ROW = "prune_checkpoint"
COORDS = ["step", "path", "source"]  # not `checkpoint`: that name is the root's dimension coordinate


def _row_key(source: int, checkpoint: str) -> tuple[int, str]:
    return int(source), str(checkpoint)


def _selected(st, opts: PruneOptions) -> list[dict]:
    from specdyn.selection import subsample

    rows = [
        {"step": int(step), "checkpoint": ck, "source": int(src), "row": int(r), "path": path}
        for step, ck, src, r, path in zip(st.steps, st.checkpoints, st.source_index, st.rows, st.checkpoint_paths())
    ]
    rows = subsample(rows, opts.every, None, opts.steps, key=lambda r: r["step"])
    if not rows:
        raise SpecdynError(
            f"{st.path}: no analyzed checkpoints selected; check --steps/--every or run `specdyn analyze`"
        )
    for r in rows:
        if not r["path"].exists():
            raise SpecdynError(
                f"{r['path']}: checkpoint listed in {st.path} no longer exists; pruning needs the weights"
            )
    return rows


def _layout(
    existing, rows: list[dict], keep: list[float], metrics: list[str], matrices: list[str], ranks, attrs
) -> results.Arrays:
    """The group's arrays for these rows and fractions, holding the done cells of `existing` at their new places."""
    R, K, S, M = len(rows), len(keep), len(SPLITS), len(metrics)
    a: results.Arrays = {
        "step": ((ROW,), np.array([r["step"] for r in rows], dtype=np.int64)),
        "path": ((ROW,), np.array([r["checkpoint"] for r in rows], dtype=object)),
        "source": ((ROW,), np.array([r["source"] for r in rows], dtype=np.int64)),
        "keep": (("keep",), np.array(keep, dtype=np.float64)),
        "split": (("split",), np.array(SPLITS, dtype=object)),
        "metric": (("metric",), np.array(metrics, dtype=object)),
        "prune_matrix": (("prune_matrix",), np.array(matrices, dtype=object)),
        "kept_rank": (
            ("keep", "prune_matrix"),
            np.array([[ranks[f][m] for m in matrices] for f in keep], dtype=np.int64).reshape(K, len(matrices)),
        ),
        "full": ((ROW, "split", "metric"), np.full((R, S, M), np.nan)),
        "top_kept": ((ROW, "keep", "split", "metric"), np.full((R, K, S, M), np.nan)),
        "bottom_kept": ((ROW, "keep", "split", "metric"), np.full((R, K, S, M), np.nan)),
        "svd_from_store": ((ROW, "prune_matrix"), np.zeros((R, len(matrices)), dtype=bool)),
        "done": ((ROW, "keep"), np.zeros((R, K), dtype=bool)),
    }
    if existing is None:
        return a
    old, _ = existing
    old_rows = {_row_key(s, c): i for i, (s, c) in enumerate(zip(old["source"][1], old["path"][1]))}
    old_keep = {float(f): j for j, f in enumerate(old["keep"][1])}
    for i, r in enumerate(rows):
        oi = old_rows.get(_row_key(r["source"], r["checkpoint"]))
        if oi is None:
            continue
        for j, f in enumerate(keep):
            oj = old_keep.get(f)
            if oj is not None and old["done"][1][oi, oj]:
                a["top_kept"][1][i, j] = old["top_kept"][1][oi, oj]
                a["bottom_kept"][1][i, j] = old["bottom_kept"][1][oi, oj]
                a["done"][1][i, j] = True
        if old["done"][1][oi].any():
            a["full"][1][i] = old["full"][1][oi]
            a["svd_from_store"][1][i] = old["svd_from_store"][1][oi]
    return a


def _check_compatible(existing, attrs: dict, store: Path, overwrite: bool) -> None:
    if existing is None or overwrite:
        return
    old = existing[1]
    for key, what in (("task", "task"), ("bn_recal", "BatchNorm recalibration")):
        if old.get(key) != attrs.get(key):
            raise SpecdynError(
                f"{store}/{GROUP}: holds results with another {what} ({old.get(key)!r} vs {attrs.get(key)!r}); "
                "pass --overwrite to replace them"
            )


def _spectra(st, row: int, base, matrices, ranks_needed, engine, warned: set):
    """Per matrix: (s, U, V) with at least the needed top vectors, from the store when it has them."""
    out, from_store = {}, []
    for m in matrices:
        sp, stored = spectrum_for(st, row, m.spec, m.spec.flatten(base[m.key]), ranks_needed[m.key], engine, warned)
        out[m.key] = sp
        from_store.append(stored)
    return out, np.array(from_store, dtype=bool)


@dataclass
class _Setup:
    """What every row of a run shares: the task and its model, the matrices pruned, their kept ranks."""

    task: object
    model: object
    state_map: object
    matrices: list
    names: list[str]
    ranks: dict[float, dict[str, int]]
    attrs: dict


def prune_eval(store_path: Path, opts: PruneOptions, show_progress: bool = True) -> dict:
    """Run (or resume) the pruning evaluation of a store's checkpoints; returns the JSON summary."""
    from specdyn.spectral.svd import SVDEngine
    from specdyn.store import SpectralStore, write_session

    t0 = time.perf_counter()
    store_path = Path(store_path)
    keep = sorted({float(f) for f in opts.keep})
    st = SpectralStore.open(store_path)
    rows = _selected(st, opts)
    setup = _setup(st, rows, keep, opts)
    if not opts.overwrite:  # refuse before the write session touches the store
        _check_compatible(results.read_group(store_path, GROUP), setup.attrs, store_path, False)
    engine, warned = SVDEngine(), set()
    computed, svd_counts = 0, {"store": 0, "checkpoint": 0}
    with write_session(store_path, "prune-eval"):
        results.recover(store_path, GROUP)
        existing = None if opts.overwrite else results.read_group(store_path, GROUP)
        _check_compatible(existing, setup.attrs, store_path, opts.overwrite)
        all_rows, all_keep, metrics = _merge(existing, rows, keep, setup)
        todo = _todo(store_path, existing, rows, all_rows, all_keep, keep, metrics, setup)
        total = sum(1 + 2 * len(missing) for _, _, missing in todo)
        with progress(show_progress and total > 0) as bar:
            task_id = bar.add_task("prune-eval", total=total)
            for r, i, missing in todo:
                bar.update(task_id, description=f"prune-eval step {r['step']}")
                metrics, from_store = _evaluate_row(
                    st,
                    store_path,
                    r,
                    i,
                    missing,
                    all_rows,
                    all_keep,
                    metrics,
                    setup,
                    opts,
                    engine,
                    warned,
                    lambda: bar.advance(task_id),
                )
                svd_counts["store"] += int(from_store.sum())
                svd_counts["checkpoint"] += int((~from_store).sum())
                computed += 1
    return summary(store_path, computed, svd_counts, time.perf_counter() - t0)


def _setup(st, rows: list[dict], keep: list[float], opts: PruneOptions) -> _Setup:
    """Everything checked before any work: the task, its model against every selected checkpoint."""
    first = Endpoint.open(rows[0]["path"], opts.trust_pickle)
    task, described = resolve_task(opts.task, first.path, opts.config, data=opts.data)
    model = task.build_model()
    state_map = match_state(model, first.shapes, first.path)
    for r in rows[1:]:
        other = Endpoint.open(r["path"], opts.trust_pickle)
        check_same_architecture(first.shapes, other.shapes, first.path, other.path)
        other.reader.close()
    first.reader.close()
    known = {name: st.matrix_spec(name) for name in st.matrices}
    matrices = pruned_matrices(model, state_map, known)
    if not matrices:
        raise SpecdynError(f"{first.path}: the model has a single weight matrix (the final layer); nothing to prune")
    ranks = {f: {m.spec.name: keep_rank(m.spec.k, f) for m in matrices} for f in keep}
    attrs = {
        "task": described,
        "bn_recal": opts.bn_recal,
        "final_layer": state_map.names[model_final(model)],
        "store": str(st.path.resolve()),
    }
    return _Setup(task, model, state_map, matrices, [m.spec.name for m in matrices], ranks, attrs)


def _merge(existing, rows: list[dict], keep: list[float], setup: _Setup):
    """The group's rows and fractions after this run: the selected ones and those already in the store (whose
    kept ranks stay as they were computed)."""
    if existing is None:
        return sorted(rows, key=_order), keep, None
    old = existing[0]
    old_rows = [
        {"step": int(s), "checkpoint": str(c), "source": int(src)}
        for s, c, src in zip(old["step"][1], old["path"][1], old["source"][1])
    ]
    sel = {_row_key(r["source"], r["checkpoint"]) for r in rows}
    all_rows = rows + [r for r in old_rows if _row_key(r["source"], r["checkpoint"]) not in sel]
    all_keep = sorted(set(keep) | {float(f) for f in old["keep"][1]})
    old_ranks = {
        float(f): dict(zip(old["prune_matrix"][1], old["kept_rank"][1][j])) for j, f in enumerate(old["keep"][1])
    }
    for f in all_keep:
        fresh = {n: keep_rank(m.spec.k, f) for n, m in zip(setup.names, setup.matrices)}
        setup.ranks.setdefault(f, old_ranks.get(f, fresh))
    return sorted(all_rows, key=_order), all_keep, [str(m) for m in old["metric"][1]]


def _order(r: dict):
    return r["step"], r["source"], r["checkpoint"]


def _todo(store_path, existing, rows, all_rows, all_keep, keep, metrics, setup: _Setup):
    """(row, its index in the group, the fractions it still needs) for each selected row; rewrites the group
    first when its axes change (new rows or fractions), keeping every done cell."""
    index = {_row_key(r["source"], r["checkpoint"]): i for i, r in enumerate(all_rows)}
    done = None
    if existing is not None:
        layout = _layout(existing, all_rows, all_keep, metrics, setup.names, setup.ranks, setup.attrs)
        if not _same_axes(existing[0], layout):
            attrs = {**existing[1], **setup.attrs}
            results.write_group(store_path, GROUP, layout, attrs, row_dim=ROW, coords=COORDS)
        done = results.read_group(store_path, GROUP)[0]["done"][1]
    todo = []
    for r in rows:
        i = index[_row_key(r["source"], r["checkpoint"])]
        missing = [f for j, f in enumerate(all_keep) if f in keep and (done is None or not done[i, j])]
        if missing:
            todo.append((r, i, missing))
    return todo


def _evaluate_row(
    st, store_path, r, i, missing, all_rows, all_keep, metrics, setup: _Setup, opts, engine, warned, tick
):
    """The full model and both variants of every missing fraction at one checkpoint, written as one row (its
    done flags last). Returns the metric names (known after the first evaluation) and which SVDs the store gave."""
    task, model, matrices, ranks = setup.task, setup.model, setup.matrices, setup.ranks
    ep = Endpoint.open(r["path"], opts.trust_pickle)
    base = read_state(ep.reader, setup.state_map, model)
    ep.reader.close()
    full = run_variant(task, model, base, {}, recal=False)
    tick()
    if metrics is None:  # the first evaluation names the metrics: now the group can be laid out
        metrics = metric_names(full)
        layout = _layout(None, all_rows, all_keep, metrics, setup.names, ranks, setup.attrs)
        results.write_group(store_path, GROUP, layout, setup.attrs, row_dim=ROW, coords=COORDS)
    need = {m.key: max(ranks[f][m.spec.name] for f in missing) for m in matrices}
    spectra, from_store = _spectra(st, r["row"], base, matrices, need, engine, warned)
    g = results.open_group(store_path, GROUP)
    top_row, bottom_row, done_row = g["top_kept"][i], g["bottom_kept"][i], g["done"][i]
    for f in missing:
        j = all_keep.index(f)
        top, bottom = low_rank_pair(base, matrices, spectra, {m.key: ranks[f][m.spec.name] for m in matrices})
        top_row[j] = as_array(run_variant(task, model, base, top, opts.bn_recal), metrics)
        tick()
        bottom_row[j] = as_array(run_variant(task, model, base, bottom, opts.bn_recal), metrics)
        tick()
        done_row[j] = True
    values = {"full": as_array(full, metrics), "top_kept": top_row, "bottom_kept": bottom_row,
              "svd_from_store": from_store}  # fmt: skip
    results.write_row(g, i, values, {"done": done_row})
    return metrics, from_store


def model_final(model) -> str:
    from specdyn.evals.taskload import matrix_params

    return matrix_params(model)[-1]


def _same_axes(old: results.Arrays, new: results.Arrays) -> bool:
    for name in ("step", "path", "source", "keep", "metric", "prune_matrix"):
        a, b = old.get(name), new[name]
        if a is None or a[1].shape != b[1].shape or not all(str(x) == str(y) for x, y in zip(a[1], b[1])):
            return False
    return True


def load_results(store_path: Path) -> dict | None:
    """The prune results of a store as numpy arrays over its done rows, or None if prune-eval never ran."""
    got = results.read_group(Path(store_path), GROUP)
    if got is None:
        return None
    a, attrs = got
    done = a["done"][1]
    keep_rows = done.any(axis=1)
    out = {name: v[keep_rows] if dims and dims[0] == ROW else v for name, (dims, v) in a.items()}
    out["done"] = done[keep_rows]
    out["attrs"] = attrs
    return out


def summary(store_path: Path, computed: int, svd_counts: dict, seconds: float) -> dict:
    r = load_results(store_path)
    out = {
        "store": str(store_path),
        "group": GROUP,
        "computed": computed,
        "seconds": round(seconds, 3),
        "svd": svd_counts,
        "checkpoints": 0,
    }
    if r is None:
        return out
    metrics, splits = [str(m) for m in r["metric"]], [str(s) for s in r["split"]]
    keep = [float(f) for f in r["keep"]]
    out.update(
        {"checkpoints": int(len(r["step"])), "keep": keep, "metrics": metrics, "steps": [int(s) for s in r["step"]]}
    )

    def table(arr):
        return {s: {m: arr[..., si, mi].tolist() for mi, m in enumerate(metrics)} for si, s in enumerate(splits)}

    out["full"] = table(r["full"])
    out["top_kept"] = {
        str(f): table(np.where(r["done"][:, j, None, None], r["top_kept"][:, j], np.nan)) for j, f in enumerate(keep)
    }
    out["bottom_kept"] = {
        str(f): table(np.where(r["done"][:, j, None, None], r["bottom_kept"][:, j], np.nan)) for j, f in enumerate(keep)
    }
    return out
