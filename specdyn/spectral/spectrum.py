"""What an SVD route returns (`Spectrum`) and what every route shares, apart from the dispatcher (`svd`) and the
GPU route (`gpu`), which both import it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The Gram route recovers the large side's vectors as W v / s; below this ratio s_i / s_1 that division loses
# accuracy (and is undefined for exact zeros), so such matrices go to LAPACK instead.
GRAM_MIN_RATIO = 1e-3


@dataclass
class Spectrum:
    """s: all k singular values (descending, float64); U (m, r), V (n, r): top-r vectors, sign-normalized."""

    s: np.ndarray
    U: np.ndarray
    V: np.ndarray

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.s)))


def sign_normalize(U: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip each pair (u_i, v_i) so that the largest-magnitude entry of u_i is positive (deterministic signs)."""
    if U.shape[-1] == 0:
        return U, V
    idx = np.argmax(np.abs(U), axis=-2)
    picked = np.take_along_axis(U, idx[..., None, :], axis=-2)[..., 0, :]
    signs = np.where(picked < 0, -1.0, 1.0).astype(U.dtype)
    if U.base is None and V.base is None and U.flags.writeable and V.flags.writeable:
        U *= signs[..., None, :]  # arrays of our own: flipped in place (a thin matrix's vectors are its size)
        V *= signs[..., None, :].astype(V.dtype)
        return U, V
    return U * signs[..., None, :], V * signs[..., None, :]
