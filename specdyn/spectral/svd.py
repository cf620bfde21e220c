"""The SVD engine: all singular values and the top-r singular vectors of a matrix, by the fastest accurate route.

Routes (each verified in tests against float64 LAPACK gesdd to 1e-6 relative to the largest singular value):
- "gram": eigendecomposition of the float64 Gram matrix of the smaller side (numpy/OpenBLAS); the other side's
  vectors come from W v / s for the top r only. Fastest on this machine for every shape we measured, and the
  only one that never forms the large side's full basis.
- "gram_torch": the same with torch (MKL).
- "lapack": torch.linalg.svd in float32 (MKL gesdd).
- "cuda": torch.linalg.svd on a CUDA device.
`SVDEngine` times the candidate routes once per shape and machine, and then keeps the fastest for that shape.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# torch is imported inside the functions that use it, so that reading a store does not pay its import time.

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
    import torch

    wide = W.shape[0] < W.shape[1]
    T = torch.from_numpy(W).double()
    G = T @ T.T if wide else T.T @ T
    evals, evecs = torch.linalg.eigh(G)
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


CPU_ROUTES = ("gram", "gram_torch", "lapack")
ROUTES = CPU_ROUTES + ("cuda",)


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
        self.candidates = ("cuda",) if self.device.startswith("cuda") else CPU_ROUTES

    def _key(self, shape) -> str:
        import torch

        return f"{shape[0]}x{shape[1]}/{self.device}/threads={torch.get_num_threads()}"

    def __call__(self, W: np.ndarray) -> Spectrum:
        """SVD of a 2-D array (computed in float32/float64); NaN/Inf input gives a NaN spectrum."""
        W = np.ascontiguousarray(W, dtype=np.float32)
        if min(W.shape) == 0 or not np.all(np.isfinite(W)):
            return nan_spectrum(W.shape, self.top)
        if self.route != "auto":
            return self._run(self.route, W)
        # `chosen` first: a store's recorded routes (prefilled by analyze) win over this machine's candidates.
        route = self.chosen.get(W.shape) or (self.candidates[0] if len(self.candidates) == 1 else None)
        route = route or self._cached(W.shape)
        if route:
            self.chosen[W.shape] = route
            return self._run(route, W)
        return self._calibrate(W)

    def _calibrate(self, W: np.ndarray) -> Spectrum:
        times, results = {}, {}
        for r in self.candidates:
            t0 = time.perf_counter()
            results[r] = self._run(r, W)
            times[r] = time.perf_counter() - t0
        best = min(times, key=times.get)
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
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs re-measuring next time

    def _run(self, route: str, W: np.ndarray) -> Spectrum:
        if route == "cuda":
            return svd_lapack(W, self.top, self.device)
        if route == "lapack":
            return svd_lapack(W, self.top)
        try:
            out = (svd_gram if route == "gram" else svd_gram_torch)(W, self.top)
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
