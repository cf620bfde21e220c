"""The SVD engine: all singular values and the top-r singular vectors of a matrix, by the fastest accurate route.

Routes (each verified in tests against float64 LAPACK gesdd to 1e-6 relative to the largest singular value):
- "gram": eigendecomposition of the float64 Gram matrix of the smaller side (numpy/OpenBLAS); the other side's
  vectors come from W v / s for the top r only. Fastest on this machine for every shape we measured, and the
  only one that never forms the large side's full basis.
- "gram_topk": the same float64 Gram matrix, but one tridiagonal reduction (LAPACK dsytrd) gives every
  eigenvalue (dsterf) and only the top-r eigenvectors are computed (inverse iteration, dstein) and
  back-transformed (dormqr on the reflectors): the full eigenbasis the store throws away is never formed.
  A residual check falls back to the full "gram" eigendecomposition when it fails.
- "gram_torch": the same with torch (MKL).
- "lapack": torch.linalg.svd in float32 (MKL gesdd).
- "cuda": the float64 Gram route on a CUDA device, same-shape matrices batched (specdyn.spectral.gpu).
`SVDEngine` times the candidate routes once per shape and machine, and then keeps the fastest for that shape.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.files import atomic_write

# torch is imported inside the functions that use it, so that reading a store does not pay its import time.

# The Gram route recovers the large side's vectors as W v / s; below this ratio s_i / s_1 that division loses
# accuracy (and is undefined for exact zeros), so such matrices go to LAPACK instead.
GRAM_MIN_RATIO = 1e-3
# Row blocks for the float64 Gram product keep the float64 copy of a tall matrix small (50257 x 768 embeddings).
# 16 MiB: under glibc's largest mmap threshold (32 MiB), so every block after the first reuses freed heap memory
# instead of mapping (and page-faulting) fresh pages.
GRAM_BLOCK_ELEMENTS = 1 << 21


class NonFinite(ValueError):
    """The matrix holds NaN or Inf (seen in its Gram matrix, which any NaN or Inf reaches)."""


def all_finite(W: np.ndarray) -> bool:
    """Whether W holds no NaN/Inf, without an elementwise temporary (128 MB for a 32000 x 4096 matrix): a float64
    sum of float32 values cannot overflow, and any NaN or Inf makes it NaN or Inf."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf + (-inf) is NaN: the answer, not a problem
        return bool(np.isfinite(W.sum(dtype=np.float64)))


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
        G = A64.T @ A64
    else:
        G = np.zeros((small, small), dtype=np.float64)
        for i in range(0, rows, step):
            blk = A[i : i + step].astype(np.float64)
            G += blk.T @ blk
    return _finite(G)


def _finite(G: np.ndarray) -> np.ndarray:
    """G, after checking it (small) instead of the matrix (large): a float64 Gram matrix of float32 values cannot
    overflow, so it is finite exactly when the matrix is."""
    if not np.isfinite(G).all():
        raise NonFinite
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


# The top-r eigenpairs from inverse iteration must satisfy |G z - lam z| <= TOPK_RESIDUAL * lam_max and be
# orthonormal to this tolerance; a float64 eigh of a Gram matrix reaches ~1e-13, so 1e-10 only catches failures.
TOPK_RESIDUAL = 1e-10


def gram_top_eigh(G: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray] | None:
    """All eigenvalues (ascending) and the top-r eigenvectors (ascending order, (n, r)) of a symmetric float64
    matrix from one tridiagonal reduction; None if LAPACK reports an error or the residual check fails."""
    try:
        from scipy.linalg import lapack
    except ImportError:  # scipy is optional (specdyn[fast]): the caller takes the full eigendecomposition
        return None

    n = G.shape[0]
    if r == 0 or n < 2:
        return None
    lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
    c, d, e, tau, info = lapack.dsytrd(G, lower=1, lwork=max(lwork, 1))
    if info:
        return None
    evals, info = lapack.dsterf(d.copy(), e.copy())
    if info:
        return None
    # dstein takes the wanted eigenvalues of the (unsplit) tridiagonal: one block holding all n rows.
    iblock = np.ones(n, dtype=np.int32)
    isplit = np.zeros(n, dtype=np.int32)
    isplit[0] = n
    z, info = lapack.dstein(d, e, evals[n - r :], iblock, isplit)
    if info:
        return None
    Z = np.asfortranarray(z[:, :r])
    # Q = H(1) ... H(n-1) with the reflectors below the subdiagonal (dsytrd, lower): Q z = [z_0; Q' z_1:] where
    # Q' is the orthogonal factor of a QR factorization stored like dgeqrf's, which dormqr applies.
    # dormqr's blocked code wants nb * r + 65 * 64 of workspace (nb <= 64; 32 in OpenBLAS's LAPACK); with less
    # it falls back to unblocked code, 2x slower.
    tail, _, info = lapack.dormqr("L", "N", c[1:, : n - 1], tau, Z[1:], lwork=64 * r + 65 * 64)
    if info:
        return None
    Z[1:] = tail
    top = evals[n - r :]
    scale = max(abs(evals[-1]), abs(evals[0]), np.finfo(np.float64).tiny)
    residual = np.linalg.norm(G @ Z - Z * top, axis=0).max() / scale
    orth = np.abs(Z.T @ Z - np.eye(r)).max()
    if not (residual <= TOPK_RESIDUAL and orth <= TOPK_RESIDUAL * n):
        return None
    return evals, Z


def svd_gram_topk(W: np.ndarray, top: int) -> Spectrum | None:
    """Gram route computing only the top-r eigenvectors (one dsytrd, dsterf, dstein, dormqr); falls back to the
    full eigendecomposition ("gram") when its residual check fails. None when the top vectors would be
    inaccurate (as for "gram")."""
    wide = W.shape[0] < W.shape[1]
    G = _gram64(W, wide)
    r = min(top, G.shape[0])
    out = gram_top_eigh(G, r)
    # _finish_gram reads the last r columns (ascending order), which is all that gram_top_eigh returns
    evals, evecs = out if out is not None else np.linalg.eigh(G)
    return _finish_gram(W, evals, evecs, top, wide)


def svd_gram_torch(W: np.ndarray, top: int) -> Spectrum | None:
    """Gram-eigh route in torch (MKL)."""
    import torch

    wide = W.shape[0] < W.shape[1]
    T = torch.from_numpy(W).double()
    G = _finite((T @ T.T if wide else T.T @ T).numpy())
    evals, evecs = torch.linalg.eigh(torch.from_numpy(G))
    return _finish_gram(W, evals.numpy(), evecs.numpy(), top, wide)


def svd_lapack(W: np.ndarray, top: int, device: str = "cpu") -> Spectrum:
    """torch.linalg.svd (gesdd); docs/method.md's safe_svd retry with W + 1e-10 I, then float64, if it fails."""
    import torch

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


# How much faster (in one timing) another route must be than the first candidate to be chosen over it.
CALIBRATION_MARGIN = 1.25
CPU_ROUTES = ("gram_topk", "gram", "gram_torch", "lapack")
ROUTES = CPU_ROUTES + ("cuda",)


def cpu_candidates() -> tuple[str, ...]:
    """The CPU routes `auto` measures: gram_topk only where scipy (its LAPACK bindings) is installed."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        return tuple(r for r in CPU_ROUTES if r != "gram_topk")
    return CPU_ROUTES


GRAM_ROUTES = {"gram_topk": svd_gram_topk, "gram": svd_gram, "gram_torch": svd_gram_torch}


def compute_threads() -> int:
    """The threads the SVDs run on: torch's count where torch is loaded (it may have been set), else what torch
    would start with (OMP_NUM_THREADS, or the cores this process may use), so analyze need not import torch."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def route_cache_path() -> Path:
    """Where measured route choices persist, per machine: $SPECDYN_CACHE_DIR or ~/.cache/specdyn."""
    base = os.environ.get("SPECDYN_CACHE_DIR") or Path.home() / ".cache" / "specdyn"
    return Path(base) / "svd_routes.json"


@dataclass
class SVDEngine:
    """Computes Spectra by the fastest route for each shape.

    The first matrix of a shape never seen on this machine (with this many threads) is computed by every
    candidate route, timed, and the fastest result kept; the choice is saved in `route_cache_path()`, so every
    matrix of a shape uses one route (results are reproducible run to run) and the measurement is paid once.
    `route="gram"` etc. pins a route instead. Routes put in `chosen` beforehand (a store's) are used as given.
    """

    top: int = 64
    device: str = "cpu"
    route: str = "auto"
    cache: bool = True
    recalibrate: bool = False  # measure again even where the cache has a choice (e.g. it was made under load)
    chosen: dict = field(default_factory=dict)  # shape -> route
    timings: dict = field(default_factory=dict)  # shape -> {route: seconds}, for shapes measured in this run

    def __post_init__(self):
        if self.route not in ("auto", *ROUTES):
            raise ValueError(f"unknown SVD route {self.route!r}")
        self.candidates = ("cuda",) if self.device.startswith("cuda") else cpu_candidates()

    def _key(self, shape) -> str:
        return f"{shape[0]}x{shape[1]}/{self.device}/threads={compute_threads()}"

    def __call__(self, W: np.ndarray) -> Spectrum:
        """SVD of a 2-D array (computed in float32/float64); NaN/Inf input gives a NaN spectrum. A column-major
        float32 array (a transposed layout) is used as it is: every route computes the same from either."""
        W = np.asarray(W)
        if W.dtype != np.float32 or not (W.flags.c_contiguous or W.flags.f_contiguous):
            W = np.ascontiguousarray(W, dtype=np.float32)
        if min(W.shape) == 0:
            return nan_spectrum(W.shape, self.top)
        route = self._route(W.shape)
        if route in GRAM_ROUTES:  # their Gram matrix shows NaN/Inf: no pass over W to look for them
            try:
                return self._run(route, W)
            except NonFinite:
                return nan_spectrum(W.shape, self.top)
        if not all_finite(W):
            return nan_spectrum(W.shape, self.top)
        return self._run(route, W) if route else self._calibrate(W)

    def _route(self, shape) -> str | None:
        """The route for this shape, or None where it must be measured."""
        if self.route != "auto":
            return self.route
        # `chosen` first: a store's recorded routes (prefilled by analyze) win over this machine's candidates.
        route = self.chosen.get(shape) or (self.candidates[0] if len(self.candidates) == 1 else None)
        route = route or self._cached(shape)
        if route:
            self.chosen[shape] = route
        return route

    def _calibrate(self, W: np.ndarray) -> Spectrum:
        times, results = {}, {}
        warm = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
        for r in self.candidates:
            self._run(r, warm)  # imports (scipy, torch) and first-call costs are not the route's
            t0 = time.perf_counter()
            results[r] = self._run(r, W)
            times[r] = time.perf_counter() - t0
        # The first candidate (gram_topk, the least work) is kept unless another is clearly faster: one timing
        # on a loaded machine is noisy, and a noise-picked route would then serve every matrix of the shape.
        best = min(times, key=times.get)
        first = self.candidates[0]
        if times[best] > times[first] / CALIBRATION_MARGIN:
            best = first
        self.timings[W.shape] = times
        self.chosen[W.shape] = best
        self._save(W.shape, best)
        return results[best]

    def _cached(self, shape) -> str | None:
        if not self.cache or self.recalibrate:
            return None
        try:
            route = json.loads(route_cache_path().read_text()).get(self._key(shape))
        except (OSError, ValueError):
            return None
        return route if route in self.candidates else None

    def _save(self, shape, route: str) -> None:
        if not self.cache:
            return
        path = route_cache_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                table = json.loads(path.read_text())
            except (OSError, ValueError):
                table = {}
            table[self._key(shape)] = route
            atomic_write(path, json.dumps(table, indent=1, sort_keys=True))
        except (OSError, SpecdynError):
            pass  # a read-only home (or a link planted at the cache) only costs re-measuring next time

    def batcher(self):
        """The device's batched Gram route (specdyn.spectral.gpu.BatchedGram), made once."""
        if getattr(self, "_batcher", None) is None:
            from specdyn.spectral.gpu import BatchedGram

            self._batcher = BatchedGram(self.top, self.device)
        return self._batcher

    def _run(self, route: str, W: np.ndarray) -> Spectrum:
        if route == "cuda":
            return self.batcher()([W])[0]
        if route == "lapack":
            return svd_lapack(W, self.top)
        try:
            out = GRAM_ROUTES[route](W, self.top)
        except (np.linalg.LinAlgError, RuntimeError):
            out = None
        return out if out is not None else svd_lapack(W, self.top)

    def summary(self) -> dict:
        """The route used per shape, for the store's attrs and the benchmark."""
        if self.route != "auto":
            return {"all": self.route}
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
