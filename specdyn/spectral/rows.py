"""From matrices to store rows: one SVD per matrix per checkpoint, then every measurement derived from it.

`RowComputer` turns one checkpoint's matrices into a RowResult (metrics, spectra, alignment).
`derive_stability` computes the arrays that compare checkpoints (stability against the final checkpoint and the
previous one) from singular vectors already computed, so growing a series never recomputes an SVD. Pure
functions of arrays: the store (`specdyn.store`) reads their inputs and writes their outputs.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.metrics import metrics_of, score, spectrum_metrics, subspace_overlap, sva_diag
from specdyn.spectral.pairs import PairSpec, pair_diag, slice_needs, slice_vectors
from specdyn.spectral.svd import Spectrum, SVDEngine

# Rows of U/V read at once while deriving: bounds memory for tall matrices (a 50257 x 64 float32 U is 13 MB).
DERIVE_BLOCK_BYTES = 256 << 20


@dataclass
class RowResult:
    metrics: dict[str, np.ndarray]  # name -> (M,)
    spectra: list[Spectrum | None]  # (M,); None where a worker already wrote that matrix into the store
    alignment: np.ndarray  # (P, top), NaN-padded
    alignment_score: np.ndarray  # (P,)
    nonfinite: list[str]  # matrices holding NaN/Inf (their metrics are NaN)
    base: dict[str, np.ndarray] | None = None  # the arrays relative to a base model (store.layout.BASE_ARRAYS)


@dataclass
class MatrixResult:
    """One matrix of one checkpoint: the unit of work below a checkpoint (it travels between processes)."""

    index: int  # position in the specs
    spectrum: Spectrum | None  # None once written to the store by the worker that computed it
    metrics: dict[str, float]
    slices: dict  # the slice SVDs its alignment pairs need
    finite: bool


class RowComputer:
    """Computes a checkpoint's RowResult from its matrices, given in the specs' order; or matrix by matrix
    (`matrix`, anywhere) and then the row from every matrix's result (`assemble`, where they meet)."""

    def __init__(
        self, specs: list[MatrixSpec], pairs: list[PairSpec], top: int, n_heads: int | None, engine: SVDEngine
    ):
        self.specs, self.pairs, self.top, self.n_heads, self.engine = specs, pairs, top, n_heads, engine
        self.by_name = {s.name: s for s in specs}
        self.needs = slice_needs(pairs, specs)

    def __call__(self, matrices: Iterable[tuple[MatrixSpec, np.ndarray]], on_matrix=None) -> RowResult:
        results = []
        for j, (spec, W) in enumerate(matrices):
            results.append(self.matrix(j, spec, W))
            if on_matrix:
                on_matrix(spec)
        return self.assemble(results)

    def matrix(self, j: int, spec: MatrixSpec, W: np.ndarray, sp: Spectrum | None = None) -> MatrixResult:
        """Matrix j's result; `sp` is its spectrum when already computed (in a batch on a device)."""
        sp = sp if sp is not None else self.engine(W)
        slices = {}
        if sp.finite and spec.name in self.needs:
            slices = slice_vectors(W, spec, self.needs[spec.name], self.n_heads, self.engine)
        return MatrixResult(j, sp, spectrum_metrics(sp.s), slices, sp.finite)

    def assemble(self, results: list[MatrixResult], spectra: Mapping[str, Spectrum] | None = None) -> RowResult:
        """The row from every matrix's result (in any order). `spectra` supplies the spectra of matrices whose
        result no longer carries one (written to the store by a worker), for the alignment pairs."""
        results = sorted(results, key=lambda r: r.index)
        assert [r.index for r in results] == list(range(len(self.specs))), "a row needs every matrix once"
        per_metric = {name: np.full(len(self.specs), np.nan) for name in metrics_of("spectrum")}
        nonfinite, slices = [], {}
        for r in results:
            name = self.specs[r.index].name
            if not r.finite:
                nonfinite.append(name)
            if r.slices:
                slices[name] = r.slices
            for metric, value in r.metrics.items():
                per_metric[metric][r.index] = value
        held = {self.specs[r.index].name: r.spectrum for r in results if r.spectrum is not None}
        alignment = np.full((len(self.pairs), self.top), np.nan, dtype=np.float32)
        for p, pair in enumerate(self.pairs):
            if pair.prev in nonfinite or pair.next in nonfinite:
                continue
            both = {n: held[n] if n in held else spectra[n] for n in (pair.prev, pair.next)}
            d = pair_diag(pair, self.by_name, both, slices)[: self.top]
            alignment[p, : d.shape[0]] = d
        return RowResult(
            per_metric,
            [r.spectrum for r in results],
            alignment,
            score(alignment) if len(self.pairs) else np.zeros(0),
            nonfinite,
        )


def derive_stability(
    done: np.ndarray, n_rows: int, n_matrices: int, top: int, vectors, row_values=None
) -> dict[str, np.ndarray]:
    """stability, stability_score, subspace_overlap (against the final completed row) and stability_prev_score
    (against the previous completed row), for every row of a store with `n_rows` rows.

    `done`: the completed rows in order; `vectors(j, rows)` returns matrix j's (U, V) stacked over those rows.
    `row_values(j)`: the number of values one row of matrix j's U and V hold together; rows are then read in blocks of
    DERIVE_BLOCK_BYTES, so memory stays bounded for tall matrices (all at once without it). The last block is
    read first, since it holds the final row every other row is compared with."""
    stability = np.full((n_rows, n_matrices, top), np.nan, dtype=np.float32)
    overlap = np.full((n_rows, n_matrices), np.nan)
    prev_score = np.full((n_rows, n_matrices), np.nan)
    if len(done):
        for j in range(n_matrices):
            size = row_values(j) * 4 if row_values else 0  # float32 bytes of one row of U and V
            block = max(1, DERIVE_BLOCK_BYTES // size) if size else len(done)
            starts = list(range(0, len(done), block))
            last = vectors(j, done[starts[-1] :])  # read first: it holds the final row
            # copies: the final row against itself must not share a buffer (numpy would take syrk for U^T U, whose
            # rounding differs from the gemm every other row gets)
            Uf, Vf = last[0][-1].copy(), last[1][-1].copy()
            prev = None
            for b in starts:
                rows = done[b : b + block]
                for i, U, V in zip(rows, *(last if b == starts[-1] else vectors(j, rows))):
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
