"""The arrays of a row relative to the base model (docs/method.md §11): ΔW's spectrum, base_overlap, intruders.

The base's left singular bases are computed once per run (per matrix, when a row first needs one) and held; a
row's own singular vectors are the ones its SVDs already produced. ΔW comes from the adapter's factors (a LoRA
matrix: rank r, never an m × n SVD), from the effective weights (DoRA, modules_to_save), or, for a full
checkpoint, from W − W_base, the base matrix read once and held while it fits BASE_BYTES.
"""

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.io import Checkpoint, CheckpointReader
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.relative import (
    DELTA_METRICS,
    base_overlap,
    delta_metrics,
    dense_singular_values,
    intruder_counts,
    left_basis,
    lowrank_singular_values,
    max_cosines,
)
from specdyn.spectral.rows import RowResult
from specdyn.store.layout import BASE_METRICS

BASE_BYTES = 1 << 30  # base matrices held for W − W_base beyond this are read again per row
# The base's left singular bases held in memory; beyond this they go to a scratch folder beside the store and are
# memory-mapped back (a 7B model's 64 adapted q/v matrices hold 4 GiB of them, twice the memory bound).
BASES_BYTES = 256 << 20


class BaseRelative:
    """Computes each row's base-relative arrays against one base checkpoint. Use as a context manager."""

    def __init__(
        self,
        base: Checkpoint,
        specs: list[MatrixSpec],
        doc: dict,
        trust_pickle: bool = False,
        scratch: Path | None = None,
    ):
        self.specs, self.trust_pickle = specs, trust_pickle
        self.scratch_path, self.scratch, self.bases_bytes = scratch, None, 0
        self.epsilons = np.asarray(doc["epsilon"], dtype=np.float64)
        self.topk = int(doc["intruder_topk"])
        self.reader = CheckpointReader(base, trust_pickle=trust_pickle)
        self.bases: dict[str, np.ndarray] = {}  # name -> the base's left singular vectors
        self.held: dict[str, np.ndarray] = {}  # name -> the base matrix (full checkpoints' W − W_base)
        self.held_bytes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.reader.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def base_matrix(self, spec: MatrixSpec) -> np.ndarray:
        if spec.name in self.held:
            return self.held[spec.name]
        W = spec.flatten(self.reader.array(spec.name))
        if self.held_bytes + W.nbytes <= BASE_BYTES:
            self.held[spec.name], self.held_bytes = W, self.held_bytes + W.nbytes
        return W

    def basis(self, spec: MatrixSpec) -> np.ndarray:
        if spec.name not in self.bases:
            U = left_basis(self.base_matrix(spec))
            if self.bases_bytes + U.nbytes > BASES_BYTES and self.scratch_path is not None:
                U = self._spill(len(self.bases), U)
            else:
                self.bases_bytes += U.nbytes
            self.bases[spec.name] = U
        return self.bases[spec.name]

    def _spill(self, j: int, U: np.ndarray) -> np.ndarray:
        """U written to the run's scratch folder `scratch` (made on first use, removed at the end; one run at a time
        holds the store's lock, so a folder found there is a killed run's), memory-mapped back."""
        if self.scratch is None:
            if self.scratch_path.is_symlink():
                raise SpecdynError(f"{self.scratch_path}: a link where specdyn keeps its scratch files; remove it")
            shutil.rmtree(self.scratch_path, ignore_errors=True)
            self.scratch_path.mkdir()
            self.scratch = self.scratch_path
        path = self.scratch / f"{j}.npy"
        np.save(path, U)
        return np.load(path, mmap_mode="r")

    def row(self, ckpt: Checkpoint, result: RowResult, stored: Mapping) -> dict[str, np.ndarray]:
        """{name: (M,) array} for BASE_METRICS and "intruders" (M, E); NaN for matrices holding NaN/Inf."""
        M, E = len(self.specs), len(self.epsilons)
        out = {name: np.full(M, np.nan) for name in BASE_METRICS}
        intruders = np.full((M, E), np.nan)
        with CheckpointReader(ckpt, trust_pickle=self.trust_pickle) as reader:
            for j, spec in enumerate(self.specs):
                if spec.name in result.nonfinite:
                    continue
                delta = reader.delta(spec.name)
                if delta is None:  # the base's matrix itself: its singular vectors are the base's
                    values = delta_metrics(np.zeros(0), spec.k)
                    overlap, count = 1.0, np.zeros(E)
                else:
                    values = delta_metrics(self._delta_values(spec, reader, delta), spec.k)
                    sp = result.spectra[j] if result.spectra[j] is not None else stored[spec.name]
                    if sp.U.shape[1] == 0:  # a values-only store (--topk 0) keeps no singular vectors
                        overlap, count = np.nan, np.full(E, np.nan)
                    else:
                        U_base = self.basis(spec)
                        overlap = base_overlap(sp.U, U_base)
                        count = intruder_counts(max_cosines(sp.U[:, : self.topk], U_base), self.epsilons)
                for name in DELTA_METRICS:
                    out[name][j] = values[name]
                out["base_overlap"][j] = overlap
                intruders[j] = count
        return {**out, "intruders": intruders}

    def _delta_values(self, spec: MatrixSpec, reader: CheckpointReader, delta) -> np.ndarray:
        """The singular values of ΔW."""
        if delta is NotImplemented:  # a full checkpoint
            return dense_singular_values(spec.flatten(reader.array(spec.name)) - self.base_matrix(spec))
        if delta[0] == "lowrank":
            return lowrank_singular_values(delta[1], delta[2])
        return dense_singular_values(spec.flatten(delta[1]))
