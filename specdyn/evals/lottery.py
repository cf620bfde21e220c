"""`lottery`: lottery-ticket masks against the SVD, from weights alone (docs/method.md 2 `evaluate_run_mask.py`, 3).

At one checkpoint (default: the last analyzed) and for each density d: the global magnitude mask M of
docs/method.md's get_masks over every ndim >= 2 tensor but the last, and a random mask with the same per-layer
densities; per masked matrix, the singular vector agreement SVA(SVD(W), SVD(M ⊙ W)) (its first `sva_rank`
ranks) and its score. With masked runs (`specdyn train --mask-from`), the SVA between each masked checkpoint
and the dense checkpoint at the same step (or index) over time. Results replace `evals/lottery` in the store.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from specdyn.errors import SpecdynError
from specdyn.evals.options import LotteryOptions
from specdyn.evals.spectra import spectrum, spectrum_for
from specdyn.evals.variants import progress
from specdyn.io.runmeta import read_run_info
from specdyn.spectral.matrices import MatrixSpec, classify
from specdyn.spectral.metrics import score, sva, sva_diag
from specdyn.store import results

GROUP = "evals/lottery"
MASK_TYPES = ("magnitude", "random")


def _rows(st) -> list[dict]:
    return [
        {"step": int(s), "checkpoint": c, "row": int(r), "path": path}
        for s, c, r, path in zip(st.steps, st.checkpoints, st.rows, st.checkpoint_paths())
    ]


def _pick(rows: list[dict], step: int | None, where: Path) -> dict:
    if step is None:
        return rows[-1]
    for r in rows:
        if r["step"] == step:
            return r
    raise SpecdynError(
        f"{where}: no analyzed checkpoint at step {step}; steps: {', '.join(str(r['step']) for r in rows[:12])}"
        + (" ..." if len(rows) > 12 else "")
    )


def _read_matrices(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """Every ndim >= 2 tensor of a checkpoint, in its depth (registration) order, as float32."""
    from specdyn.io import CheckpointReader, open_checkpoint

    with CheckpointReader(open_checkpoint(path), trust_pickle=trust_pickle) as reader:
        return {n: reader.tensor(n).to(torch.float32) for n in reader.names() if len(reader.shape(n)) >= 2}


def _spec(st, name: str, shape) -> MatrixSpec:
    return st.matrix_spec(name) if name in st.matrices else MatrixSpec(name, tuple(shape), classify(name, tuple(shape)))


def mask_sva(W: np.ndarray, M: np.ndarray, dense, engine, rank: int) -> np.ndarray:
    """SVA(SVD(W), SVD(M ⊙ W)) over the first min(rank, k) ranks (docs/method.md 2 `sva_mask_final`)."""
    r = min(rank, min(W.shape))
    masked = spectrum(engine, W * M, r)
    return sva(dense.U[:, :r], dense.V[:, :r], masked.U[:, :r], masked.V[:, :r])


def _run_name(path: Path, taken: set) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name) or "run"
    base, i = name, 1
    while name in taken:
        i += 1
        name = f"{base}-{i}"
    taken.add(name)
    return name


def _zip(dense: list[dict], masked: list, how: str, where: Path) -> list[tuple[dict, object]]:
    """Pairs (dense row, masked checkpoint): equal steps, or equal positions (docs/method.md 2 zips by index)."""
    if how == "index":
        return list(zip(dense, masked))
    by_step = {r["step"]: r for r in dense}
    out = [(by_step[c.step], c) for c in masked if c.step in by_step]
    if not out:
        raise SpecdynError(
            f"{where}: none of its steps is an analyzed step of the dense run; pass --zip index to "
            "pair checkpoints by position, or analyze the dense run at the masked run's steps"
        )
    return out


def lottery(store_path: Path, opts: LotteryOptions, show_progress: bool = True) -> dict:
    """Masks from one analyzed checkpoint, the SVA of each masked matrix against the dense one, and (with
    --masked runs) masked against dense over time; written as the store's evals/lottery group."""
    from specdyn.spectral.svd import SVDEngine
    from specdyn.store import SpectralStore, write_session

    t0 = time.perf_counter()
    densities = sorted({float(d) for d in opts.densities})
    st = SpectralStore.open(store_path)
    rows = _rows(st)
    if not rows:
        raise SpecdynError(f"{st.path}: no analyzed checkpoints; run `specdyn analyze` first")
    at = _pick(rows, opts.step, st.path)
    if not at["path"].exists():
        raise SpecdynError(f"{at['path']}: checkpoint listed in {st.path} no longer exists; masks need its weights")
    runs = _masked_runs(rows, opts)
    tensors = _read_matrices(at["path"], opts.trust_pickle)
    if len(tensors) < 2:
        raise SpecdynError(
            f"{at['path']}: a single weight matrix (the final layer, which masks leave alone); nothing to mask"
        )
    masked_names = list(tensors)[:-1]
    engine = SVDEngine()
    total = len(densities) * 2 * len(masked_names) + len(masked_names) + sum(len(z) for _, _, z in runs)
    with progress(show_progress) as bar:
        tid = bar.add_task("lottery", total=total)
        arrays, kept = _mask_svas(st, at, tensors, masked_names, densities, opts, engine, bar, tid)
        group_attrs, run_summaries = _analyze_masked_runs(st, runs, arrays, opts, engine, lambda: bar.advance(tid))
    attrs = {
        "step": at["step"],
        "checkpoint": str(at["path"]),
        "seed": opts.seed,
        "sva_rank": opts.sva_rank,
        "final_layer": list(tensors)[-1],
        "zip": opts.zip,
        "mask": "global magnitude over every ndim >= 2 tensor but the last (docs/method.md get_masks); random: "
        "per-layer Bernoulli with the magnitude mask's layer densities",
    }
    with write_session(Path(store_path), "lottery"):
        results.write_group(Path(store_path), GROUP, arrays, attrs, row_dim=("run_checkpoint",),
                            coords=["step", "dense_step", "path"], group_attrs=group_attrs)  # fmt: skip
    total_weights = sum(v.numel() for k, v in tensors.items() if k in masked_names)
    return {
        "store": str(store_path),
        "group": GROUP,
        "step": at["step"],
        "checkpoint": str(at["path"]),
        "seconds": round(time.perf_counter() - t0, 3),
        "matrices": masked_names,
        "densities": [
            _density_summary(d, i, arrays, kept, masked_names, total_weights) for i, d in enumerate(densities)
        ],
        "runs": run_summaries,
    }


def _masked_runs(rows: list[dict], opts: LotteryOptions) -> list:
    """(run dir, its checkpoints, their pairing with the dense rows) for every --masked run."""
    from specdyn.io import discover

    runs = []
    for d in opts.masked:
        ckpts = discover(d)
        if not ckpts:
            raise SpecdynError(f"{d}: no checkpoints in this masked run")
        runs.append((Path(d), ckpts, _zip(rows, ckpts, opts.zip, Path(d))))
    return runs


def _mask_svas(st, at: dict, tensors: dict, masked_names: list[str], densities: list[float], opts, engine, bar, tid):
    """Per density and mask type (magnitude, random): the SVA of SVD(W) vs SVD(M⊙W) of every masked matrix."""
    from specdyn import branching

    R, L, D = opts.sva_rank, len(masked_names), len(densities)
    specs = {n: _spec(st, n, tensors[n].shape) for n in tensors}
    sva_all = np.full((D, 2, L, R, R), np.nan, dtype=np.float32)
    scores = np.full((D, 2, L), np.nan)
    layer_density = np.full((D, 2, L), np.nan)
    kept = np.zeros((D, 2), dtype=np.int64)
    dense, warned = {}, set()
    for n in masked_names:
        dense[n], _ = spectrum_for(st, at["row"], specs[n], specs[n].flatten(tensors[n]), R, engine, warned)
        bar.advance(tid)
    for i, density in enumerate(densities):
        try:
            magnitude = branching.global_magnitude_mask(tensors, density)
        except ValueError as e:
            raise SpecdynError(f"--density {density}: {e}") from None
        random = branching.random_mask_like(magnitude, torch.Generator().manual_seed(opts.seed))
        for t, masks in enumerate((magnitude, random)):
            kept[i, t] = sum(int(m.sum()) for m in masks.values())
            for j, n in enumerate(masked_names):
                bar.update(tid, description=f"lottery d={density:g} {MASK_TYPES[t]}")
                W = specs[n].flatten(tensors[n])
                M = specs[n].flatten(masks[n].to(torch.float32))
                A = mask_sva(W, M, dense[n], engine, R)
                sva_all[i, t, j, : A.shape[0], : A.shape[1]] = A
                scores[i, t, j] = score(np.diag(A))
                layer_density[i, t, j] = float(masks[n].float().mean())
                bar.advance(tid)
    arrays: results.Arrays = {
        "density": (("lottery_density",), np.array(densities)),
        "mask_type": (("mask_type",), np.array(MASK_TYPES, dtype=object)),
        "lottery_matrix": (("lottery_matrix",), np.array(masked_names, dtype=object)),
        "sva": (("lottery_density", "mask_type", "lottery_matrix", "rank_i", "rank_j"), sva_all),
        "sva_score": (("lottery_density", "mask_type", "lottery_matrix"), scores),
        "layer_density": (("lottery_density", "mask_type", "lottery_matrix"), layer_density),
        "kept": (("lottery_density", "mask_type"), kept),
    }
    return arrays, kept


def _analyze_masked_runs(st, runs, arrays: results.Arrays, opts, engine, tick):
    """Each masked run's SVA against the dense run over time, added to `arrays` under runs/<name>/."""
    group_attrs, taken, summaries = {}, set(), []
    for run_dir, _ckpts, zipped in runs:
        name = _run_name(run_dir, taken)
        a, info = _masked_run(st, run_dir, zipped, opts.sva_rank, engine, opts.trust_pickle, tick)
        for k, v in a.items():
            arrays[f"runs/{name}/{k}"] = v
        group_attrs[f"runs/{name}"] = info
        mean_score = np.nanmean(a["sva_score"][1], axis=1).tolist()
        summaries.append({"name": name, **info, "steps": a["step"][1].tolist(), "mean_sva_score": mean_score})
    return group_attrs, summaries


def _density_summary(d: float, i: int, arrays, kept, masked_names: list[str], total_weights: int) -> dict:
    scores, layer_density = arrays["sva_score"][1], arrays["layer_density"][1]
    out = {"density": d}
    for ti, t in enumerate(MASK_TYPES):
        out[t] = {
            "kept": int(kept[i, ti]),
            "kept_fraction": float(kept[i, ti] / total_weights),
            "sva_score": dict(zip(masked_names, scores[i, ti].tolist())),
            "layer_density": dict(zip(masked_names, layer_density[i, ti].tolist())),
        }
    return out


def _masked_run(st, run_dir: Path, zipped, R: int, engine, trust_pickle: bool, tick):
    """SVA diagonal (first min(R, store top) ranks) and score per matrix between a masked run's checkpoints and
    the dense run's checkpoints they are zipped with. Dense vectors come from the store; the masked run's from
    its own store when it was analyzed, else from one SVD per matrix and checkpoint."""
    from specdyn.store import SpectralStore, default_store, is_store

    names = st.matrices
    r = min(R, st.top, max(st.matrix_spec(n).k for n in names))
    own = SpectralStore.open(default_store(run_dir)) if is_store(default_store(run_dir)) else None
    own_rows = {c: int(row) for c, row in zip(own.checkpoints, own.rows)} if own is not None else {}
    T = len(zipped)
    diag = np.full((T, len(names), r), np.nan, dtype=np.float32)
    scores = np.full((T, len(names)), np.nan)
    for t, (dense_row, ckpt) in enumerate(zipped):
        tensors = _read_matrices(ckpt.path, trust_pickle)
        own_row = own_rows.get(ckpt.relpath)
        for j, n in enumerate(names):
            if n not in tensors:
                continue
            spec = st.matrix_spec(n)
            if tuple(tensors[n].shape) != spec.original_shape:
                raise SpecdynError(
                    f"{ckpt.path}: {n} is {tuple(tensors[n].shape)}, the dense run's is "
                    f"{spec.original_shape}; a masked run must share the dense run's architecture"
                )
            _, Ud, Vd = st.row_spectrum(n, dense_row["row"])
            W = spec.flatten(tensors[n])
            sp = None
            if own is not None and own_row is not None:
                sp, _ = spectrum_for(own, own_row, spec, W, r, engine)
            if sp is None:
                sp = spectrum(engine, W, r)
            d = sva_diag(sp.U[:, :r], sp.V[:, :r], Ud[:, :r], Vd[:, :r])
            diag[t, j, : len(d)] = d
            scores[t, j] = score(d)
        tick()
    info = read_run_info(run_dir)
    arrays = {
        "step": (
            ("run_checkpoint",),
            np.array([c.step if c.step is not None else -1 for _, c in zipped], dtype=np.int64),
        ),
        "dense_step": (("run_checkpoint",), np.array([d["step"] for d, _ in zipped], dtype=np.int64)),
        "path": (("run_checkpoint",), np.array([c.relpath for _, c in zipped], dtype=object)),
        "run_matrix": (("run_matrix",), np.array(names, dtype=object)),
        "sva_diag": (("run_checkpoint", "run_matrix", "run_rank"), diag),
        "sva_score": (("run_checkpoint", "run_matrix"), scores),
    }
    return arrays, {"run_dir": str(Path(run_dir).resolve()), "mask": info.get("mask"), "sva_rank": r}


def load_results(store_path: Path) -> dict | None:
    got = results.read_group(Path(store_path), GROUP)
    if got is None:
        return None
    a, attrs = got
    return {**{k: v for k, (_, v) in a.items()}, "attrs": attrs}
