"""One model instance, many weight variants: load a state, swap in edited matrices, re-estimate normalization
statistics, evaluate on train and val. Shared by prune-eval and interpolate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from specdyn.evals.lowrank import split_top_bottom, unflatten
from specdyn.evals.taskload import StateMap, load_state_, matrix_params
from specdyn.spectral.matrices import MatrixSpec, classify

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Matrix:
    """A weight matrix of the model: its state-dict key and its spec (named by the checkpoint's tensor name)."""

    key: str
    spec: MatrixSpec


def model_matrices(
    model: torch.nn.Module, state_map: StateMap, known: Mapping[str, MatrixSpec] | None = None
) -> list[Matrix]:
    """Every matrix parameter in registration order (docs/method.md 0), with its kind. A transposed convolution is
    recognised by its module type (its name need not say `tconv`), so it is flattened as (c_out, c_in·kh·kw);
    otherwise the store's kind (so flattening agrees with the stored SVDs) or the kind from name and shape."""
    params = dict(model.named_parameters())
    tconv = {
        f"{mod_name}.{p}" if mod_name else p
        for mod_name, mod in model.named_modules()
        if isinstance(mod, torch.nn.modules.conv._ConvTransposeNd)
        for p, _ in mod.named_parameters(recurse=False)
    }
    out = []
    for key in matrix_params(model):
        name = state_map.names[key]
        shape = tuple(params[key].shape)
        spec = (known or {}).get(name) or MatrixSpec(name, shape, classify(name, shape))
        if key in tconv and spec.kind != "tconv":
            spec = MatrixSpec(name, shape, "tconv")
        out.append(Matrix(key, spec))
    return out


def pruned_matrices(model: torch.nn.Module, state_map: StateMap, known=None) -> list[Matrix]:
    """Every matrix but the final layer (the last in registration order), which pruning leaves alone."""
    return model_matrices(model, state_map, known)[:-1]


@torch.no_grad()
def evaluate(task, model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} for train and val, every numeric metric the task reports."""
    out = {}
    for split in SPLITS:
        got = task.evaluate(model, split)
        out[split] = {k: float(v) for k, v in got.items() if isinstance(v, (int, float, np.number, torch.Tensor))}
    return out


@torch.no_grad()
def recalibrate(task, model: torch.nn.Module) -> None:
    from specdyn.tasks.base import recalibrate as task_recalibrate

    task_recalibrate(task, model)


def run_variant(task, model, base: Mapping[str, torch.Tensor], replacements: Mapping[str, torch.Tensor], recal: bool):
    """Load `base`, overwrite the `replacements`, optionally recalibrate BatchNorm, and evaluate."""
    load_state_(model, base)
    load_state_(model, replacements)
    if recal:
        recalibrate(task, model)
    return evaluate(task, model)


def low_rank_pair(base: Mapping[str, torch.Tensor], matrices: list[Matrix], spectra: Mapping, ranks: Mapping[str, int]):
    """Replacement tensors for the top-kept and the bottom-kept model: per matrix, keep its top `ranks[key]`
    directions, or the other k - r (docs/method.md 1.9). `spectra[key]` holds s and at least the top r vectors."""
    top, bottom = {}, {}
    for m in matrices:
        sp = spectra[m.key]
        W = m.spec.flatten(base[m.key])
        t, b = split_top_bottom(W, sp.U, sp.s, sp.V, ranks[m.key])
        dtype = base[m.key].dtype
        top[m.key] = unflatten(m.spec, t).to(dtype)
        bottom[m.key] = unflatten(m.spec, b).to(dtype)
    return top, bottom


def metric_names(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Metric names in a stable order: loss and err first, then the rest alphabetically."""
    names = {k for split in results.values() for k in split}
    return [n for n in ("loss", "err") if n in names] + sorted(names - {"loss", "err"})


def as_array(results: Mapping[str, Mapping[str, float]], metrics: list[str]) -> np.ndarray:
    """(split, metric) float64 array; NaN for a metric the task did not report this time."""
    return np.array([[results.get(s, {}).get(m, math.nan) for m in metrics] for s in SPLITS], dtype=np.float64)


class _NoBar:
    """The progress bar's interface, doing nothing (--quiet, or nothing to do)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def progress(show: bool):
    """A rich progress bar on stderr, or a silent stand-in."""
    from specdyn import console

    return console.progress() if show else _NoBar()
