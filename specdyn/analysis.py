"""From matrices to store rows: one SVD per matrix per checkpoint, then every measurement derived from it.

`compute_row` turns one checkpoint's matrices into a RowResult (metrics, spectra, alignment). `derive` fills the
arrays that compare checkpoints (stability against the final checkpoint and the previous one) from the singular
vectors already in the store, so growing a series never recomputes an SVD.
"""

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from specdyn.matrices import MatrixSpec
from specdyn.metrics import score, spectrum_metrics, sva_diag, subspace_overlap
from specdyn.pairs import PairSpec, pair_diag, slice_needs, slice_vectors
from specdyn.store import ROW_METRICS, update_attrs
from specdyn.svd import Spectrum, SVDEngine

# Rows of U/V read at once while deriving: bounds memory for tall matrices (a 50257 x 64 float32 U is 13 MB).
DERIVE_BLOCK_BYTES = 256 << 20


@dataclass
class RowResult:
    metrics: dict[str, np.ndarray]  # name -> (M,)
    spectra: list[Spectrum]  # (M,)
    alignment: np.ndarray  # (P, top), NaN-padded
    alignment_score: np.ndarray  # (P,)
    nonfinite: list[str]  # matrices holding NaN/Inf (their metrics are NaN)


class RowComputer:
    """Computes a checkpoint's RowResult from its matrices, given in the specs' order."""

    def __init__(self, specs: list[MatrixSpec], pairs: list[PairSpec], top: int, n_heads: int | None, engine: SVDEngine):
        self.specs, self.pairs, self.top, self.n_heads, self.engine = specs, pairs, top, n_heads, engine
        self.by_name = {s.name: s for s in specs}
        self.needs = slice_needs(pairs, specs)

    def __call__(self, matrices: Iterable[tuple[MatrixSpec, np.ndarray]], on_matrix=None) -> RowResult:
        spectra, slices, nonfinite = {}, {}, []
        per_metric = {name: np.full(len(self.specs), np.nan) for name in ROW_METRICS}
        for j, (spec, W) in enumerate(matrices):
            sp = self.engine(W)
            spectra[spec.name] = sp
            if not sp.finite:
                nonfinite.append(spec.name)
            elif spec.name in self.needs:
                slices[spec.name] = slice_vectors(W, self.needs[spec.name], self.n_heads, self.engine)
            for name, value in spectrum_metrics(sp.s).items():
                per_metric[name][j] = value
            if on_matrix:
                on_matrix(spec)
        alignment = np.full((len(self.pairs), self.top), np.nan, dtype=np.float32)
        for p, pair in enumerate(self.pairs):
            if pair.prev in nonfinite or pair.next in nonfinite:
                continue
            d = pair_diag(pair, self.by_name, spectra, slices)[: self.top]
            alignment[p, : d.shape[0]] = d
        return RowResult(
            per_metric,
            [spectra[s.name] for s in self.specs],
            alignment,
            score(alignment) if len(self.pairs) else np.zeros(0),
            nonfinite,
        )


def derive(root) -> None:
    """Fill stability, stability_score, subspace_overlap (against the final completed checkpoint) and
    stability_prev_score (against the previous one) for every completed row, from the stored vectors."""
    done = np.flatnonzero(root["done"][:])
    n_rows = root["done"].shape[0]
    names = [str(m) for m in root["matrix"][:]]
    top = root["stability"].shape[-1]
    stability = np.full((n_rows, len(names), top), np.nan, dtype=np.float32)
    overlap = np.full((n_rows, len(names)), np.nan)
    prev_score = np.full((n_rows, len(names)), np.nan)
    if len(done):
        final = done[-1]
        for j, name in enumerate(names):
            g = root[f"matrices/{name}"]
            Uf, Vf = g["U"][final], g["V"][final]
            row_bytes = (Uf.size + Vf.size) * 4
            block = max(1, DERIVE_BLOCK_BYTES // max(row_bytes, 1))
            prev = None
            for b in range(0, len(done), block):
                rows = done[b : b + block]
                Us = g["U"].get_orthogonal_selection((rows, slice(None), slice(None)))
                Vs = g["V"].get_orthogonal_selection((rows, slice(None), slice(None)))
                for i, U, V in zip(rows, Us, Vs):
                    d = sva_diag(U, V, Uf, Vf)
                    stability[i, j, : d.shape[0]] = d
                    overlap[i, j] = subspace_overlap(U, Uf)
                    if prev is not None:
                        prev_score[i, j] = score(sva_diag(U, V, *prev))
                    prev = (U, V)
    root["stability"][:] = stability
    root["stability_score"][:] = score(stability)
    root["subspace_overlap"][:] = overlap
    root["stability_prev_score"][:] = prev_score
    update_attrs(root, derived=derived_marker(root))


def derived_marker(root) -> dict:
    """Identifies the rows the derived arrays were computed for; a rerun with nothing new skips `derive`."""
    done = np.flatnonzero(root["done"][:])
    final = int(done[-1]) if len(done) else -1
    return {"rows": len(done), "final": str(root["checkpoint"][final]) if final >= 0 else None}
