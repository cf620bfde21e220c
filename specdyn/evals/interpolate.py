"""`interpolate`: linear mode connectivity between two checkpoints (docs/method.md 1.10 and 2, `evaluate_lmc.py`).

On an even alpha grid including both ends, the whole state dict (buffers included) is interpolated,
BatchNorm re-estimated, and the model evaluated on train and val: as is, with every matrix but the final layer
keeping its top ceil(f k) singular directions, and keeping the rest. The effective rank of every matrix is
recorded at each alpha, the signed barrier of every curve computed, and the singular vector agreement (SVA)
between the two endpoints. The batch form evaluates many pairs (all pairs of branches per split point) and
caches each endpoint's evaluation, which pairs share.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specdyn.errors import SpecdynError
from specdyn.evals.lowrank import keep_rank
from specdyn.evals.options import InterpOptions
from specdyn.evals.taskload import Endpoint, check_same_architecture, match_state, read_state, resolve_task
from specdyn.evals.variants import (
    SPLITS,
    as_array,
    low_rank_pair,
    metric_names,
    model_matrices,
    progress,
    run_variant,
)
from specdyn.io.runmeta import read_run_info
from specdyn.spectral.metrics import barrier, effective_rank, score, sva_diag
from specdyn.store import results

GROUP = "evals/interp"
ROW = "interp_pair"
COORDS = ["ckpt_a", "ckpt_b", "split_step", "label"]
CURVES = ("full", "top_kept", "bottom_kept")
STANDALONE = "interp.zarr"


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    split_step: int = -1  # the trunk step both branches started from; -1 when unknown
    label: str = ""


# ------------------------------------------------------------------------------------------ the maths


def alphas(points: int) -> np.ndarray:
    if points < 2:
        raise SpecdynError(f"--points {points}: need at least 2 (both endpoints)")
    return np.linspace(0.0, 1.0, points)


def lerp_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every tensor of a state dict. alpha 0 and 1 return the endpoints exactly;
    integer buffers (BatchNorm's num_batches_tracked) are rounded, booleans taken from the nearer endpoint."""
    if alpha == 0.0:
        return dict(a)
    if alpha == 1.0:
        return dict(b)
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.is_floating_point():
            out[k] = (1.0 - alpha) * ta + alpha * tb
        elif ta.dtype == torch.bool:
            out[k] = ta if alpha < 0.5 else tb
        else:
            out[k] = torch.round((1.0 - alpha) * ta.double() + alpha * tb.double()).to(ta.dtype)
    return out


def curve_barriers(y: np.ndarray) -> np.ndarray:
    """The signed barrier (docs/method.md 1.10) along axis 0 of y (alpha, ...), for every trailing index."""
    y = np.asarray(y, dtype=np.float64)
    flat = y.reshape(y.shape[0], -1)
    return np.array([barrier(flat[:, j]) for j in range(flat.shape[1])]).reshape(y.shape[1:])


# ------------------------------------------------------------------------------------------ pairs


def read_checkpoint_pairs(path: Path) -> list[Pair]:
    """`CKPT_A CKPT_B [SPLIT_STEP [LABEL...]]` per line (paths relative to the file); `#` starts a comment."""
    path = Path(path)
    if not path.is_file():
        raise SpecdynError(f"{path}: no such pairs file")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise SpecdynError(f"{path}:{n}: expected `CKPT_A CKPT_B [SPLIT_STEP [LABEL]]`, got {line!r}")
        split = -1
        if len(parts) > 2:
            try:
                split = int(parts[2])
            except ValueError:
                raise SpecdynError(f"{path}:{n}: SPLIT_STEP {parts[2]!r} is not an integer") from None
        a, b = ((path.parent / p).resolve() for p in parts[:2])
        pairs.append(Pair(a, b, split, " ".join(parts[3:])))
    if not pairs:
        raise SpecdynError(f"{path}: no pairs in the file")
    return pairs


def branch_pairs(branch_dirs: list[Path], at_step: int | None = None) -> list[Pair]:
    """All pairs of branches that start from the same trunk checkpoint (and perturbation), compared at their
    final checkpoints (or at `at_step`): the paper's split-point experiment (docs/method.md 3)."""
    from specdyn.io import discover

    groups: dict[tuple, list[tuple[int, Path]]] = {}
    for d in branch_dirs:
        info = read_run_info(d)
        init = info.get("init_from")
        if not isinstance(init, Mapping) or "step" not in init:
            raise SpecdynError(
                f"{d}: not a branch (its run.json has no init_from); make branches with "
                "`specdyn train --init-from CKPT`, or list pairs with --checkpoint-pairs FILE"
            )
        ckpts = discover(d)
        if at_step is not None:
            ckpts = [c for c in ckpts if c.step == at_step]
            if not ckpts:
                raise SpecdynError(f"{d}: no checkpoint at step {at_step}")
        if not ckpts:
            raise SpecdynError(f"{d}: no checkpoints")
        trunk = str(Path(init.get("path", "")).parent)
        scale = float(info.get("perturb", {}).get("scale", 0.0)) if isinstance(info.get("perturb"), Mapping) else 0.0
        seed = int(info.get("config", {}).get("seed", 0))
        groups.setdefault((int(init["step"]), trunk, scale), []).append((seed, ckpts[-1].path))
    pairs = []
    for (step, _trunk, scale), members in sorted(groups.items()):
        if len(members) < 2:
            raise SpecdynError(f"split step {step}: only one branch ({members[0][1].parent}); pairs need two or more")
        label = f"split {step}" + (f", perturbation {scale:g}" if scale else "")
        for (_, a), (_, b) in itertools.combinations(sorted(members), 2):
            pairs.append(Pair(a.resolve(), b.resolve(), step, label))
    return pairs


def infer_split(a: Path, b: Path) -> int:
    """The shared branch point of two checkpoints from their runs' run.json, or -1."""
    ia, ib = (read_run_info(p.parent).get("init_from") for p in (a, b))
    if (
        isinstance(ia, Mapping)
        and isinstance(ib, Mapping)
        and ia.get("step") == ib.get("step")
        and ia.get("step") is not None
    ):
        return int(ia["step"])
    return -1


def default_out(pairs: list[Pair]) -> Path:
    """Where results go without --out: the trunk's specdyn store when every pair branches from one trunk
    that has been analyzed, else CKPT_A's run store, else a standalone `interp.zarr` in CKPT_A's run dir."""
    from specdyn.store import default_store, is_store

    trunks = set()
    for p in pairs:
        init = read_run_info(p.a.parent).get("init_from")
        trunks.add(Path(init["path"]).parent if isinstance(init, Mapping) and init.get("path") else None)
    if len(trunks) == 1 and None not in trunks:
        trunk = next(iter(trunks))
        if is_store(default_store(trunk)):
            return default_store(trunk)
    run_dir = pairs[0].a.parent
    store = default_store(run_dir)
    return store if is_store(store) else run_dir / STANDALONE


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class PointResult:
    """Everything measured at one alpha."""

    curves: dict[str, np.ndarray]  # curve -> (split, metric)
    erank: np.ndarray  # (matrix,)
    spectra: dict | None = None  # endpoint spectra (top vectors) for the endpoint SVA


class Evaluator:
    """Evaluates states of one architecture with one model instance; caches endpoint results by path."""

    def __init__(self, task, model, state_map, matrices, opts: InterpOptions):
        from specdyn.spectral.svd import SVDEngine

        self.task, self.model, self.state_map, self.opts = task, model, state_map, opts
        self.matrices = matrices  # every matrix (effective rank); the pruned ones are all but the last
        self.pruned = matrices[:-1]
        self.ranks = {m.key: keep_rank(m.spec.k, opts.keep) for m in self.pruned}
        self.engine = SVDEngine()
        self.metrics: list[str] | None = None
        self.cache: dict[Path, PointResult] = {}

    def endpoint_state(self, path: Path) -> dict[str, torch.Tensor]:
        ep = Endpoint.open(path, self.opts.trust_pickle)
        try:
            return read_state(ep.reader, self.state_map, self.model)
        finally:
            ep.reader.close()

    def point(self, state, endpoint: bool, tick) -> PointResult:
        from specdyn.evals.spectra import spectrum
        from specdyn.spectral.svd import Spectrum

        full = run_variant(self.task, self.model, state, {}, self.opts.bn_recal)
        tick()
        if self.metrics is None:
            self.metrics = metric_names(full)
        spectra, erank = {}, []
        for m in self.matrices:
            need = self.ranks.get(m.key, 1)
            if endpoint:
                need = max(need, self.opts.sva_rank)
            sp = spectrum(self.engine, m.spec.flatten(state[m.key]), need)
            spectra[m.key] = sp
            erank.append(float(effective_rank(sp.s)) if np.all(np.isfinite(sp.s)) else np.nan)
        top, bottom = low_rank_pair(state, self.pruned, spectra, self.ranks)
        curves = {"full": as_array(full, self.metrics)}
        curves["top_kept"] = as_array(run_variant(self.task, self.model, state, top, self.opts.bn_recal), self.metrics)
        tick()
        curves["bottom_kept"] = as_array(
            run_variant(self.task, self.model, state, bottom, self.opts.bn_recal), self.metrics
        )
        tick()
        keep = (
            {
                k: Spectrum(sp.s, sp.U[:, : self.opts.sva_rank], sp.V[:, : self.opts.sva_rank])
                for k, sp in spectra.items()
            }
            if endpoint
            else None
        )
        return PointResult(curves, np.array(erank), keep)

    def pair(self, pair: Pair, grid: np.ndarray, tick) -> dict:
        sa, sb = self.endpoint_state(pair.a), self.endpoint_state(pair.b)
        points = []
        for alpha in grid:
            path = pair.a if alpha == 0.0 else pair.b if alpha == 1.0 else None
            if path is not None and path in self.cache:
                points.append(self.cache[path])
                for _ in range(3):
                    tick()
                continue
            res = self.point(lerp_state(sa, sb, float(alpha)), path is not None, tick)
            if path is not None:
                self.cache[path] = res
            points.append(res)
        out = {c: np.stack([p.curves[c] for p in points]) for c in CURVES}  # (alpha, split, metric)
        out["effective_rank"] = np.stack([p.erank for p in points])  # (alpha, matrix)
        for c in CURVES:
            out[f"{c}_barrier"] = curve_barriers(out[c])
        out["effective_rank_barrier"] = curve_barriers(out["effective_rank"])
        R = self.opts.sva_rank
        diag = np.full((len(self.matrices), R), np.nan, dtype=np.float32)
        sa_, sb_ = points[0].spectra, points[-1].spectra
        for i, m in enumerate(self.matrices):
            d = sva_diag(sa_[m.key].U, sa_[m.key].V, sb_[m.key].U, sb_[m.key].V)
            diag[i, : len(d)] = d[:R]
        out["endpoint_sva"] = diag
        out["endpoint_sva_score"] = score(diag)
        return out


def _layout(rows: list[dict], grid, metrics, names, sva_rank, existing) -> results.Arrays:
    P, A, S, M, L = len(rows), len(grid), len(SPLITS), len(metrics), len(names)
    a: results.Arrays = {
        "ckpt_a": ((ROW,), np.array([r["ckpt_a"] for r in rows], dtype=object)),
        "ckpt_b": ((ROW,), np.array([r["ckpt_b"] for r in rows], dtype=object)),
        "split_step": ((ROW,), np.array([r["split_step"] for r in rows], dtype=np.int64)),
        "label": ((ROW,), np.array([r["label"] for r in rows], dtype=object)),
        "alpha": (("alpha",), np.asarray(grid, dtype=np.float64)),
        "split": (("split",), np.array(SPLITS, dtype=object)),
        "metric": (("metric",), np.array(metrics, dtype=object)),
        "interp_matrix": (("interp_matrix",), np.array(names, dtype=object)),
        "effective_rank": ((ROW, "alpha", "interp_matrix"), np.full((P, A, L), np.nan)),
        "effective_rank_barrier": ((ROW, "interp_matrix"), np.full((P, L), np.nan)),
        "endpoint_sva": ((ROW, "interp_matrix", "interp_rank"), np.full((P, L, sva_rank), np.nan, dtype=np.float32)),
        "endpoint_sva_score": ((ROW, "interp_matrix"), np.full((P, L), np.nan)),
        "done": ((ROW,), np.zeros(P, dtype=bool)),
    }
    for c in CURVES:
        a[c] = ((ROW, "alpha", "split", "metric"), np.full((P, A, S, M), np.nan))
        a[f"{c}_barrier"] = ((ROW, "split", "metric"), np.full((P, S, M), np.nan))
    if existing is not None:
        old = existing[0]
        where = {(str(x), str(y)): i for i, (x, y) in enumerate(zip(old["ckpt_a"][1], old["ckpt_b"][1]))}
        for i, r in enumerate(rows):
            oi = where.get((r["ckpt_a"], r["ckpt_b"]))
            if oi is not None and old["done"][1][oi]:
                for name, (dims, data) in a.items():
                    if dims and dims[0] == ROW and name in old:
                        data[i] = old[name][1][oi]
    return a


def _check_compatible(existing, attrs: dict, out: Path) -> None:
    if existing is None:
        return
    old = existing[1]
    for key in ("task", "points", "keep", "bn_recal", "sva_rank"):
        if old.get(key) != attrs.get(key):
            raise SpecdynError(
                f"{out}/{GROUP}: holds results with another {key} ({old.get(key)!r} vs "
                f"{attrs.get(key)!r}); pass --overwrite to replace them, or --out elsewhere"
            )


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _row_id(p: Pair, base: Path) -> tuple[str, str]:
    return results.rel_or_abs(p.a, base), results.rel_or_abs(p.b, base)


def interpolate(pairs: list[Pair], out: Path | None, opts: InterpOptions, show_progress: bool = True) -> dict:
    """Evaluate every pair (resuming pairs already done in `out`); returns the JSON summary."""
    from specdyn.store import write_session

    t0 = time.perf_counter()
    grid = alphas(opts.points)
    if not pairs:
        raise SpecdynError("no pairs to interpolate")
    task, described, model, state_map, matrices = _setup(pairs, opts)
    names = [m.spec.name for m in matrices]
    out = Path(out) if out is not None else default_out(pairs)
    attrs = {
        "task": described,
        "points": opts.points,
        "keep": opts.keep,
        "bn_recal": opts.bn_recal,
        "sva_rank": opts.sva_rank,
        "final_layer": names[-1],
        "paths_relative_to": "the store's parent folder",
    }
    if not opts.overwrite:  # refuse before the write session touches the store
        _check_compatible(results.read_group(out, GROUP) if out.exists() else None, attrs, out)
    ev = Evaluator(task, model, state_map, matrices, opts)
    computed = 0
    with write_session(out, "interpolate") as root:
        results.mark_results_only(out, root)
        results.recover(out, GROUP)
        existing = None if opts.overwrite else results.read_group(out, GROUP)
        _check_compatible(existing, attrs, out)
        rows, done = _rows(pairs, out.parent, existing)
        todo = [
            (i, r) for i, r in enumerate(rows) if r["pair"] is not None and not done.get((r["ckpt_a"], r["ckpt_b"]))
        ]
        layout_written = existing is not None
        if existing is not None:
            ev.metrics = [str(m) for m in existing[0]["metric"][1]]
            layout = _layout(rows, grid, ev.metrics, names, opts.sva_rank, existing)
            results.write_group(out, GROUP, layout, attrs, row_dim=ROW, coords=COORDS)
        with progress(show_progress and bool(todo)) as bar:
            tid = bar.add_task("interpolate", total=len(todo) * len(grid) * 3)
            for i, r in todo:
                bar.update(tid, description=f"interpolate {r['label'] or Path(r['ckpt_a']).name}")
                res = ev.pair(r["pair"], grid, lambda: bar.advance(tid))
                if not layout_written:  # the first evaluation names the metrics: now the group can be laid out
                    layout = _layout(rows, grid, ev.metrics, names, opts.sva_rank, None)
                    results.write_group(out, GROUP, layout, attrs, row_dim=ROW, coords=COORDS)
                    layout_written = True
                results.write_row(results.open_group(out, GROUP), i, res, {"done": np.array(True)})
                computed += 1
    return summary(out, computed, time.perf_counter() - t0)


def _setup(pairs: list[Pair], opts: InterpOptions):
    """Before any work: every endpoint readable, one architecture throughout, and the task's model fits it."""
    shapes: dict[Path, dict] = {}

    def shapes_of(path: Path) -> dict:
        if path not in shapes:
            ep = Endpoint.open(path, opts.trust_pickle)
            shapes[path] = ep.shapes
            ep.reader.close()
        return shapes[path]

    for p in pairs:
        check_same_architecture(shapes_of(p.a), shapes_of(p.b), p.a, p.b)
        check_same_architecture(shapes_of(pairs[0].a), shapes_of(p.a), pairs[0].a, p.a)
    first = Endpoint.open(pairs[0].a, opts.trust_pickle)
    task, described = resolve_task(opts.task, first.path, opts.config, data=opts.data)
    model = task.build_model()
    state_map = match_state(model, first.shapes, first.path)
    first.reader.close()
    matrices = model_matrices(model, state_map)
    if len(matrices) < 2:
        raise SpecdynError(f"{first.path}: the model has a single weight matrix (the final layer); nothing to prune")
    return task, described, model, state_map, matrices


def _rows(pairs: list[Pair], base: Path, existing):
    """The group's rows after this run (the pairs given and those already stored), sorted by split step, and
    which stored pairs are done."""
    rows, seen = [], set()
    for p in pairs:
        a, b = _row_id(p, base)
        if (a, b) not in seen:
            seen.add((a, b))
            split = p.split_step if p.split_step >= 0 else infer_split(p.a, p.b)
            # pairs with neither a split step nor a label are told apart by their checkpoints' names
            label = p.label or ("" if split >= 0 else f"{_short(p.a)} vs {_short(p.b)}")
            rows.append({"ckpt_a": a, "ckpt_b": b, "split_step": split, "label": label, "pair": p})
    done = {}
    if existing is not None:
        old = existing[0]
        for i, (a, b) in enumerate(zip(old["ckpt_a"][1], old["ckpt_b"][1])):
            done[(str(a), str(b))] = bool(old["done"][1][i])
            if (str(a), str(b)) not in seen:
                rows.append({"ckpt_a": str(a), "ckpt_b": str(b), "split_step": int(old["split_step"][1][i]),
                             "label": str(old["label"][1][i]), "pair": None})  # fmt: skip
    rows.sort(key=lambda r: (r["split_step"], r["label"], r["ckpt_a"], r["ckpt_b"]))
    return rows, done


# ------------------------------------------------------------------------------------------ reading


def load_results(store: Path) -> dict | None:
    """The interpolation results of a store (done pairs only) as numpy arrays, or None when absent."""
    got = results.read_group(Path(store), GROUP)
    if got is None:
        return None
    a, attrs = got
    done = a["done"][1].astype(bool)
    out = {name: (v[done] if dims and dims[0] == ROW else v) for name, (dims, v) in a.items()}
    out["attrs"] = attrs
    return out


def barrier_by_split(r: dict, curve: str = "full", split: str = "train", metric: str = "loss") -> dict:
    """Barrier mean and std (ddof 0, as the paper's merge) over the pairs of each split step (and label)."""
    si = [str(s) for s in r["split"]].index(split)
    mi = [str(m) for m in r["metric"]].index(metric)
    vals = r[f"{curve}_barrier"][:, si, mi]
    groups: dict[tuple, list[float]] = {}
    for step, label, v in zip(r["split_step"], r["label"], vals):
        groups.setdefault((int(step), str(label)), []).append(float(v))
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "pairs": len(v)} for k, v in sorted(groups.items())}


def summary(out: Path, computed: int, seconds: float) -> dict:
    r = load_results(out)
    s = {"store": str(out), "group": GROUP, "computed": computed, "seconds": round(seconds, 3), "pairs": 0}
    if r is None or len(r["done"]) == 0:
        return s
    metrics = [str(m) for m in r["metric"]]
    s.update({"pairs": int(len(r["done"])), "alpha": r["alpha"].tolist(), "metrics": metrics})
    rows = []
    for i in range(len(r["done"])):
        row = {
            "ckpt_a": str(r["ckpt_a"][i]),
            "ckpt_b": str(r["ckpt_b"][i]),
            "split_step": int(r["split_step"][i]),
            "label": str(r["label"][i]),
        }
        for c in CURVES:
            row[c] = {
                sp: {m: r[c][i, :, si, mi].tolist() for mi, m in enumerate(metrics)} for si, sp in enumerate(SPLITS)
            }
            row[f"{c}_barrier"] = {
                sp: {m: float(r[f"{c}_barrier"][i, si, mi]) for mi, m in enumerate(metrics)}
                for si, sp in enumerate(SPLITS)
            }
        row["endpoint_sva_score"] = dict(zip((str(n) for n in r["interp_matrix"]), r["endpoint_sva_score"][i].tolist()))
        rows.append(row)
    s["results"] = rows
    by_split = {}
    for c in CURVES:
        for (step, label), v in barrier_by_split(r, c, "train", "loss").items():
            by_split.setdefault(f"{step}|{label}", {"split_step": step, "label": label})[f"{c}_train_loss_barrier"] = v
    s["barrier_by_split"] = list(by_split.values())
    return s
