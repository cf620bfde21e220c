"""Deterministic synthetic stores for plot tests and the plot benchmark, written directly with the store's own
writers (no checkpoints): weights that learn a few growing rank-1 directions over a drifting random bulk, so
effective rank falls, top singular values grow and directions settle, as in training."""

import json
import os
from pathlib import Path

import numpy as np

from specdyn.spectral.matrices import MatrixSpec, classify
from specdyn.spectral.pairs import find_pairs
from specdyn.spectral.rows import RowComputer
from specdyn.spectral.svd import SVDEngine
from specdyn.store.layout import ROW_METRICS, create_layout
from specdyn.store.writing import consolidate, derive, resize_rows, update_attrs


def transformer_shapes(
    n_layers: int, d: int = 32, vocab: int = 40, d_mlp: int | None = None
) -> list[tuple[str, tuple]]:
    """Matrix names and shapes of a small pre-LN transformer: 4 per layer plus embedding and decoder."""
    d_mlp = d_mlp or 2 * d
    shapes = [("model.embed.weight", (vocab, d))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.in_proj_weight", (3 * d, d)),
            (p + "self_attn.out_proj.weight", (d, d)),
            (p + "linear1.weight", (d_mlp, d)),
            (p + "linear2.weight", (d, d_mlp)),
        ]
    return shapes + [("model.decoder.weight", (vocab, d))]


def _weights(shape, steps, rng):
    """A matrix per step: a drifting random bulk plus rank-1 directions whose strength grows at their own rate."""
    m, n = shape
    base = rng.standard_normal((m, n)) / np.sqrt(n)
    us, vs = rng.standard_normal((4, m)), rng.standard_normal((4, n))
    gains, rates = np.array([6.0, 4.0, 2.5, 1.5]), rng.uniform(0.5, 3.0, 4) / max(float(steps[-1]), 1.0)
    drift = np.zeros((m, n))
    prev = 0.0
    for step in steps:
        drift += (
            rng.standard_normal((m, n)) * np.sqrt(max(step - prev, 0.0) / max(float(steps[-1]), 1.0)) * 0.3 / np.sqrt(n)
        )
        prev = step
        strength = gains * (1 - np.exp(-rates * step))
        low = (us.T * strength) @ vs / np.sqrt(m * n) * 3
        yield (base * np.exp(-step / max(float(steps[-1]), 1.0)) + drift + low).astype(np.float32)


def write_store(
    store: Path,
    shapes: list[tuple[str, tuple]],
    steps,
    seed: int = 0,
    top: int = 16,
    heads: int | None = 4,
    run_log: dict | None = None,
) -> Path:
    """Write a complete store at `store` (its parent is the run dir, which also gets `run_log` as run.json)."""
    store = Path(store)
    run_dir = store.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = [MatrixSpec(name, tuple(shape), classify(name, shape)) for name, shape in shapes]
    pairs = find_pairs(specs, heads)
    engine = SVDEngine(top=top, route="gram", cache=False)
    compute = RowComputer(specs, pairs, top, heads, engine)
    rng = np.random.default_rng(seed)
    series = [list(_weights(s.shape, steps, rng)) for s in specs]
    import zarr

    rows = [compute([(s, series[j][i]) for j, s in enumerate(specs)]) for i in range(len(steps))]
    root = zarr.open_group(str(store), mode="a")
    create_layout(
        root,
        specs,
        pairs,
        top,
        {"options": {"top": top, "include": [], "exclude": [], "order": "step"}, "heads": heads},
    )
    resize_rows(root, len(steps))
    # Whole arrays at once (write_row writes one row at a time, which is what analyze needs, but slow here).
    root["step"][:] = np.asarray(steps, dtype=np.int64)
    root["checkpoint"][:] = np.array([f"step_{s}.safetensors" for s in steps], dtype=object)
    root["source"][:] = 0
    for name in ROW_METRICS:
        root[name][:] = np.stack([r.metrics[name] for r in rows])
    root["alignment"][:] = np.stack([r.alignment[:, :top] for r in rows])
    root["alignment_score"][:] = np.stack([r.alignment_score for r in rows])
    for j, spec in enumerate(specs):
        g = root[f"matrices/{spec.name}"]
        g["sv"][:] = np.stack([r.spectra[j].s for r in rows])
        g["U"][:] = np.stack([r.spectra[j].U for r in rows])
        g["V"][:] = np.stack([r.spectra[j].V for r in rows])
    root["done"][:] = True
    derive(root)
    update_attrs(
        root, sources=[{"run_dir": os.path.relpath(run_dir, store.resolve().parent)}], skipped=[], svd_routes={}
    )
    consolidate(store)
    if run_log is not None:
        (run_dir / "run.json").write_text(json.dumps(run_log))
    return store


def grokking_log(steps, task: str = "modadd", config: dict | None = None, delay: float = 0.6) -> dict:
    """A run.json whose validation loss drops long after the training loss (a grokking-shaped history)."""
    last = float(steps[-1]) or 1.0
    hist = []
    for s in np.unique(np.linspace(0, last, 41).astype(int)):
        t = s / last
        train = 4.7 * np.exp(-12 * t) + 1e-3
        val = 4.7 / (1 + np.exp((t - delay) * 25)) + 0.01 + 0.5 * np.exp(-30 * t)
        hist.append(
            {
                "step": int(s),
                "train_loss": float(train),
                "val_loss": float(val),
                "train_err": float(min(1, train / 4.7)),
                "val_err": float(min(1, val / 4.7)),
            }
        )
    return {"task": task, "config": {"weight_decay": 1.0, "lr": 1e-3, **(config or {})}, "history": hist}
