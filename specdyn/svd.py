"""The SVD engine: all singular values and the top-r singular vectors of a matrix, by the fastest accurate route.

Routes (each verified in tests against float64 LAPACK gesdd to 1e-6 relative to the largest singular value):
- "gram": eigendecomposition of the float64 Gram matrix of the smaller side (numpy/OpenBLAS); the other side's
  vectors come from W v / s for the top r only. Fastest on this machine for every shape we measured, and the
  only one that never forms the large side's full basis.
- "gram_torch": the same with torch (MKL).
- "lapack": torch.linalg.svd in float32 (MKL gesdd).
- "cuda": torch.linalg.svd on a CUDA device.
`SVDEngine` times the candidate routes on the first matrices of each shape (their results are used, so the
measurement costs nothing) and then keeps the fastest for that shape.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

# The Gram route recovers the large side's vectors as W v / s; below this ratio s_i / s_1 that division loses
# accuracy (and is undefined for exact zeros), so such matrices go to LAPACK instead.
GRAM_MIN_RATIO = 1e-3
# Row blocks for the float64 Gram product keep the float64 copy of a tall matrix small (50257 x 768 embeddings).
GRAM_BLOCK_ELEMENTS = 1 << 22


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
    return U * signs[..., None, :], V * signs[..., None, :]


def _gram64(W: np.ndarray, wide: bool) -> np.ndarray:
    """W W^T (wide) or W^T W (tall) in float64, in row/column blocks to bound the float64 copy."""
    A = W.T if wide else W  # tall view: rows x small
    rows, small = A.shape
    step = max(1, GRAM_BLOCK_ELEMENTS // max(small, 1))
    if rows <= step:
        A64 = A.astype(np.float64)
        return A64.T @ A64
    G = np.zeros((small, small), dtype=np.float64)
    for i in range(0, rows, step):
        blk = A[i : i + step].astype(np.float64)
        G += blk.T @ blk
    return G


def _finish_gram(W: np.ndarray, evals: np.ndarray, evecs: np.ndarray, top: int, wide: bool) -> Spectrum | None:
    """Turn an ascending eigendecomposition of the small-side Gram into a Spectrum, or None if not accurate."""
    lam = evals[::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    r = min(top, s.shape[0])
    if r and (s[0] == 0 or s[r - 1] < GRAM_MIN_RATIO * s[0]):
        return None
    small = np.ascontiguousarray(evecs[:, ::-1][:, :r])
    big = (W @ small.astype(W.dtype)) if not wide else (W.T @ small.astype(W.dtype))
    big = big / s[:r].astype(big.dtype)
    if wide:
        U, V = small, big
    else:
        U, V = big, small
    U, V = sign_normalize(U.astype(np.float32), V.astype(np.float32))
    return Spectrum(s, U, V)


def svd_gram(W: np.ndarray, top: int) -> Spectrum | None:
    """Gram-eigh route in numpy (OpenBLAS). Returns None when the top-r vectors would be inaccurate."""
    wide = W.shape[0] < W.shape[1]
    evals, evecs = np.linalg.eigh(_gram64(W, wide))
    return _finish_gram(W, evals, evecs, top, wide)


def svd_gram_torch(W: np.ndarray, top: int) -> Spectrum | None:
    """Gram-eigh route in torch (MKL)."""
    wide = W.shape[0] < W.shape[1]
    T = torch.from_numpy(W).double()
    G = T @ T.T if wide else T.T @ T
    evals, evecs = torch.linalg.eigh(G)
    return _finish_gram(W, evals.numpy(), evecs.numpy(), top, wide)


def svd_lapack(W: np.ndarray, top: int, device: str = "cpu") -> Spectrum:
    """torch.linalg.svd (gesdd); method.md's safe_svd retry with W + 1e-10 I, then float64, if it fails."""
    T = torch.from_numpy(W).to(device)
    attempts = (lambda: T, lambda: T + 1e-10 * torch.eye(*T.shape, dtype=T.dtype, device=T.device), lambda: T.double())
    last = None
    for make in attempts:
        try:
            U, s, Vh = torch.linalg.svd(make(), full_matrices=False)
            break
        except RuntimeError as e:  # LAPACK did not converge
            last = e
    else:
        raise last
    r = min(top, s.shape[0])
    U = U[:, :r].float().cpu().numpy()
    V = Vh[:r].T.float().cpu().numpy()
    U, V = sign_normalize(U, V)
    return Spectrum(s.double().cpu().numpy(), U, V)


def nan_spectrum(shape: tuple[int, int], top: int) -> Spectrum:
    m, n = shape
    k = min(m, n)
    r = min(top, k)
    return Spectrum(np.full(k, np.nan), np.full((m, r), np.nan, np.float32), np.full((n, r), np.nan, np.float32))


CPU_ROUTES = ("gram", "gram_torch", "lapack")


@dataclass
class SVDEngine:
    """Computes Spectra, choosing per shape the fastest route by timing the first calls of each candidate."""

    top: int = 64
    device: str = "cpu"
    routes: tuple[str, ...] = CPU_ROUTES
    timings: dict = field(default_factory=dict)  # shape -> {route: seconds}
    chosen: dict = field(default_factory=dict)  # shape -> route

    def __post_init__(self):
        if self.device.startswith("cuda"):
            self.routes = ("cuda",)

    def route_for(self, shape) -> str:
        if len(self.routes) == 1:
            return self.routes[0]
        if shape in self.chosen:
            return self.chosen[shape]
        tried = self.timings.setdefault(shape, {})
        for r in self.routes:
            if r not in tried:
                return r
        best = min(tried, key=tried.get)
        self.chosen[shape] = best
        return best

    def __call__(self, W: np.ndarray) -> Spectrum:
        """SVD of a float32 2-D array; NaN/Inf input gives a NaN spectrum (the caller warns)."""
        W = np.ascontiguousarray(W, dtype=np.float32)
        if not np.all(np.isfinite(W)):
            return nan_spectrum(W.shape, self.top)
        if min(W.shape) == 0:
            return nan_spectrum(W.shape, self.top)
        route = self.route_for(W.shape)
        t0 = time.perf_counter()
        result = self._run(route, W)
        if W.shape not in self.chosen and len(self.routes) > 1:
            self.timings[W.shape][route] = time.perf_counter() - t0
        return result

    def _run(self, route: str, W: np.ndarray) -> Spectrum:
        if route == "cuda":
            return svd_lapack(W, self.top, self.device)
        if route == "lapack":
            return svd_lapack(W, self.top)
        try:
            fn = svd_gram if route == "gram" else svd_gram_torch
            out = fn(W, self.top)
        except (np.linalg.LinAlgError, RuntimeError):
            out = None
        return out if out is not None else svd_lapack(W, self.top)

    def summary(self) -> dict:
        """The route chosen per shape, for the store's attrs and the benchmark."""
        return {f"{m}x{n}": r for (m, n), r in sorted(self.chosen.items())}


def head_left_vectors(W: np.ndarray) -> np.ndarray:
    """Left singular vectors of a stack of matrices (H, a, b) with a <= b, via a batched float64 Gram eigh:
    the per-head SVDs that query-key alignment needs. Returns (H, a, a), columns in descending order."""
    W64 = W.astype(np.float64)
    G = W64 @ np.swapaxes(W64, -1, -2)
    _, evecs = np.linalg.eigh(G)
    U = np.ascontiguousarray(evecs[..., ::-1])
    # No V is needed; signs do not matter for |<u, u'>|.
    return U.astype(np.float32)
