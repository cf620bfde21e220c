"""Low-rank pruning of one weight matrix (docs/method.md 1.9), as pure functions of the matrix and its top singular
triplets.

Keeping the top r directions is U_r S_r V_rᵀ; keeping the bottom k - r is the rest, W - U_r S_r V_rᵀ, which is
exactly U_{r:} S_{r:} V_{r:}ᵀ. Both variants therefore need only the top r vectors, which is what lets
prune-eval reuse the top vectors already in the store instead of computing a full SVD.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from specdyn.spectral.matrices import MatrixSpec

VARIANTS = ("top_kept", "bottom_kept")  # paper names: pruned_bot (bottom removed), pruned_top (top removed)


def keep_rank(k: int, fraction: float) -> int:
    """Directions kept by the top variant: ceil(fraction * k), the paper's r (k=27, 0.5 -> 14).

    fraction * k is rounded to 9 decimals first so that float noise does not add a direction (0.1 * 30 is
    3.0000000000000004 in floating point, and its ceiling would be 4).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"keep fraction must be in [0, 1], got {fraction}")
    return min(k, max(0, math.ceil(round(fraction * k, 9))))


def top_part(U: np.ndarray, s: np.ndarray, V: np.ndarray, r: int) -> np.ndarray:
    """U[:, :r] diag(s[:r]) V[:, :r]ᵀ in float64 (vectors as columns, s descending)."""
    Ur = np.asarray(U[:, :r], dtype=np.float64)
    Vr = np.asarray(V[:, :r], dtype=np.float64)
    return (Ur * np.asarray(s[:r], dtype=np.float64)) @ Vr.T


def split_top_bottom(
    W: np.ndarray, U: np.ndarray, s: np.ndarray, V: np.ndarray, r: int
) -> tuple[np.ndarray, np.ndarray]:
    """(W keeping its top r singular directions, W keeping the other k - r), as float32 m x n matrices.

    r = k returns (W, 0) and r = 0 returns (0, W) exactly, so keeping everything is the unpruned model bit for bit.
    """
    W = np.asarray(W, dtype=np.float32)
    k = min(W.shape)
    if not 0 <= r <= k:
        raise ValueError(f"rank {r} outside [0, {k}]")
    if r == k:
        return W.copy(), np.zeros_like(W)
    if r == 0:
        return np.zeros_like(W), W.copy()
    if U.shape[1] < r or V.shape[1] < r:
        raise ValueError(f"need the top {r} singular vectors, got {U.shape[1]}")
    top = top_part(U, s, V, r)
    return top.astype(np.float32), (W.astype(np.float64) - top).astype(np.float32)


def unflatten(spec: MatrixSpec, M: np.ndarray) -> torch.Tensor:
    """The inverse of `MatrixSpec.flatten`: an m x n matrix back to the tensor's original shape (a transposed
    conv is transposed back on dims 0 and 1; no kernel flip, as docs/method.md 0)."""
    shape = spec.original_shape
    if spec.transposed:  # a Conv1D weight: back to in x out
        return torch.from_numpy(np.ascontiguousarray(M.T)).reshape(shape)
    if spec.kind == "tconv":
        t = torch.from_numpy(np.ascontiguousarray(M)).reshape(shape[1], shape[0], *shape[2:])
        return t.transpose(0, 1).contiguous()
    return torch.from_numpy(np.ascontiguousarray(M)).reshape(shape)
