"""From matrices to store rows: one SVD per matrix per checkpoint, then every measurement derived from it.

`RowComputer` turns one checkpoint's matrices into a RowResult (metrics, spectra, alignment).
`derive_stability` computes the arrays that compare checkpoints (stability against the final checkpoint and the
previous one) from singular vectors already computed, so growing a series never recomputes an SVD. Pure
functions of arrays: the store (`specdyn.store`) reads their inputs and writes their outputs.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.metrics import SPECTRUM_METRICS, score, spectrum_metrics, subspace_overlap, sva_diag
from specdyn.spectral.pairs import PairSpec, pair_diag, slice_needs, slice_vectors
from specdyn.spectral.svd import Spectrum, SVDEngine

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

    def __init__(
        self, specs: list[MatrixSpec], pairs: list[PairSpec], top: int, n_heads: int | None, engine: SVDEngine
    ):
        self.specs, self.pairs, self.top, self.n_heads, self.engine = specs, pairs, top, n_heads, engine
        self.by_name = {s.name: s for s in specs}
        self.needs = slice_needs(pairs, specs)

    def __call__(self, matrices: Iterable[tuple[MatrixSpec, np.ndarray]], on_matrix=None) -> RowResult:
        spectra, slices, nonfinite = {}, {}, []
        per_metric = {name: np.full(len(self.specs), np.nan) for name in SPECTRUM_METRICS}
        for j, (spec, W) in enumerate(matrices):
            sp = self.engine(W)
            spectra[spec.name] = sp
            if not sp.finite:
                nonfinite.append(spec.name)
            elif spec.name in self.needs:
                slices[spec.name] = slice_vectors(W, spec, self.needs[spec.name], self.n_heads, self.engine)
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


def derive_stability(done: np.ndarray, n_rows: int, n_matrices: int, top: int, vectors) -> dict[str, np.ndarray]:
    """stability, stability_score, subspace_overlap (against the final completed row) and stability_prev_score
    (against the previous completed row), for every row of a store with `n_rows` rows.

    `done`: the completed rows in order; `vectors(j, rows)` returns matrix j's (U, V) stacked over those rows.
    Rows are read in blocks of DERIVE_BLOCK_BYTES, so memory stays bounded for tall matrices."""
    stability = np.full((n_rows, n_matrices, top), np.nan, dtype=np.float32)
    overlap = np.full((n_rows, n_matrices), np.nan)
    prev_score = np.full((n_rows, n_matrices), np.nan)
    if len(done):
        final = done[-1:]
        for j in range(n_matrices):
            Uf, Vf = (a[0] for a in vectors(j, final))
            block = max(1, DERIVE_BLOCK_BYTES // max((Uf.size + Vf.size) * 4, 1))
            prev = None
            for b in range(0, len(done), block):
                rows = done[b : b + block]
                for i, U, V in zip(rows, *vectors(j, rows)):
                    d = sva_diag(U, V, Uf, Vf)
                    stability[i, j, : d.shape[0]] = d
                    overlap[i, j] = subspace_overlap(U, Uf)
                    if prev is not None:
                        prev_score[i, j] = score(sva_diag(U, V, *prev))
                    prev = (U, V)
    return {
        "stability": stability,
        "stability_score": score(stability),
        "subspace_overlap": overlap,
        "stability_prev_score": prev_score,
    }
