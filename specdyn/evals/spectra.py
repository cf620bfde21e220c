"""Singular triplets for the evaluations: read from the store when it holds enough top vectors of the very same
weights, otherwise one SVD of the checkpoint's matrix. No matrix is decomposed twice for one checkpoint."""

from __future__ import annotations

import numpy as np

from specdyn import console
from specdyn.spectral.matrices import MatrixSpec

# A stored SVD whose Frobenius norm disagrees with the checkpoint's matrix by more than this is stale (the file
# was rewritten after `specdyn analyze`), so it is not used.
NORM_RTOL = 1e-3


def stored_spectrum(st, row: int, spec: MatrixSpec, W: np.ndarray, need: int, warned: set | None = None):
    """The store's (s, U, V) of matrix `spec` at physical row `row` when it keeps at least `need` vectors and
    matches `W`; None otherwise (then the caller computes the SVD)."""
    from specdyn.spectral.svd import Spectrum

    if spec.name not in st.matrices or min(st.top, spec.k) < min(need, spec.k):
        return None
    if st.matrix_spec(spec.name).kind != spec.kind and "tconv" in (spec.kind, st.matrix_spec(spec.name).kind):
        return None  # the store flattened this tensor the other way (a transposed conv its name did not reveal)
    s, U, V = st.row_spectrum(spec.name, row)
    norm = float(np.linalg.norm(np.asarray(W, dtype=np.float64)))
    if np.all(np.isfinite(s)) and abs(np.sqrt((s**2).sum()) - norm) <= NORM_RTOL * max(norm, 1e-30):
        return Spectrum(s, U, V)
    if warned is not None and spec.name not in warned:
        warned.add(spec.name)
        console.warn(
            f"{st.path}: the stored SVD of {spec.name} does not match the checkpoint's weights (rewritten "
            "since `specdyn analyze`?); computing it from the checkpoint"
        )
    return None


def spectrum(engine, W: np.ndarray, need: int):
    """One SVD with at least the top `need` vectors (all singular values)."""
    engine.top = max(1, min(need, min(W.shape)))
    return engine(W)


def spectrum_for(st, row: int, spec: MatrixSpec, W: np.ndarray, need: int, engine, warned: set | None = None):
    """(Spectrum, from_store): the stored triplets when usable, else a fresh SVD."""
    sp = stored_spectrum(st, row, spec, W, need, warned) if st is not None else None
    if sp is not None:
        return sp, True
    return spectrum(engine, W, need), False
