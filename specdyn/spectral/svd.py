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
- "lapack": torch.linalg.svd in float64 (MKL gesdd).
- "cuda": the float64 Gram route on a CUDA device, same-shape matrices batched (specdyn.spectral.gpu).
`SVDEngine` times the candidate routes once per shape and machine, and then keeps the fastest for that shape.
"""

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.files import atomic_write
from specdyn.spectral.spectrum import GRAM_MIN_RATIO, Spectrum, sign_normalize  # noqa: F401 - re-exported

# torch is imported inside the functions that use it, so that reading a store does not pay its import time.

# Row blocks for the float64 Gram product keep the float64 copy of a tall matrix small (50257 x 768 embeddings).
# 16 MiB: under glibc's largest mmap threshold (32 MiB), so every block after the first reuses freed heap memory
# instead of mapping (and page-faulting) fresh pages.
GRAM_BLOCK_ELEMENTS = 1 << 21
# Matrices with at most this many rows or columns go by the Gram route without timing the others.
THIN_K = 16


class NonFinite(ValueError):
    """The matrix holds NaN or Inf (seen in its Gram matrix, which any NaN or Inf reaches)."""


def all_finite(W: np.ndarray) -> bool:
    """Whether W holds no NaN/Inf, without an elementwise temporary (128 MB for a 32000 x 4096 matrix): a float64
    sum of float32 values cannot overflow, and any NaN or Inf makes it NaN or Inf."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf + (-inf) is NaN: the answer, not a problem
        return bool(np.isfinite(W.sum(dtype=np.float64)))


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
    big /= s[:r].astype(big.dtype)  # in place, as the casts below: a 10^8 x 1 matrix's vectors are 400 MB each
    if wide:
        U, V = small, big
    else:
        U, V = big, small
    U, V = sign_normalize(U.astype(np.float32, copy=False), V.astype(np.float32, copy=False))
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
    """torch.linalg.svd (gesdd) in float64; docs/method.md's safe_svd retry with W + 1e-10 I if it fails.

    float64, not float32: a float32 gesdd's vectors move by up to 3e-4 with the number of BLAS threads (the
    rounding of its blocked reductions), so a store computed by workers with fewer threads each differed from a
    serial one; in float64 they move by ~1e-12, below the float32 the vectors are stored in."""
    import torch

    T = torch.from_numpy(W).to(device).double()
    attempts = (lambda: T, lambda: T + 1e-10 * torch.eye(*T.shape, dtype=T.dtype, device=T.device))
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


def svd_values(W: np.ndarray) -> Spectrum:
    """Singular values only (`--topk 0`): the eigenvalues of the float64 Gram matrix of the smaller side (one
    tridiagonal reduction and dsterf, LAPACK's values-only dsyevd), no vectors. Accurate to about
    sqrt(n eps) s_1 ~ 3e-7 s_1 for the smallest values, like the "gram" route's."""
    wide = W.shape[0] < W.shape[1]
    lam = np.linalg.eigvalsh(_gram64(W, wide))[::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    return Spectrum(s, np.zeros((W.shape[0], 0), np.float32), np.zeros((W.shape[1], 0), np.float32))


def nan_spectrum(shape: tuple[int, int], top: int) -> Spectrum:
    m, n = shape
    k = min(m, n)
    r = min(top, k)
    return Spectrum(np.full(k, np.nan), np.full((m, r), np.nan, np.float32), np.full((n, r), np.nan, np.float32))


# Calibration (`SVDEngine._calibrate`). Routes are timed by the CPU time of the calibrating thread with one BLAS
# thread: CPU time counts work done, not waiting for a core, so other jobs on the machine barely move it (with two
# BLAS threads on a loaded machine, the idle thread's spin-waits quadrupled gram_topk's CPU time). The timings
# are interleaved (each round runs every candidate once, in a rotated order) and repeated until the ordering is
# clear. The cost model's route (`preferred_route`) is kept unless another beats it by CALIBRATION_MARGIN in its
# best time and in every round.
CALIBRATION_MARGIN = 1.15
CALIBRATION_ROUNDS = (2, 5)  # at least, at most
# After the first round a route this much slower than the preferred one is not timed again (it cannot win).
CALIBRATION_DROP = 2.0
# A cached route is measured again when RECHECK_AFTER matrices of its shape in a row take this much longer than its
# calibration: CPU time where BLAS runs one thread; else wall time, allowed to stretch with the load average.
RECHECK_FACTOR = 2.0
RECHECK_AFTER = 2
CPU_ROUTES = ("gram_topk", "gram", "gram_torch", "lapack")
ROUTES = CPU_ROUTES + ("cuda",)
CACHE_VERSION = 2  # entries of older versions (timed by wall clock) are not used


def _busy() -> float:
    """How many times over the machine's cores are asked for (the 1-minute load average per core, at least 1):
    wall times stretch by about that much on a busy machine, which is no reason to re-measure a route."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


def calibration_clock() -> float:
    """CPU seconds of the calling thread (the only one computing while calibration holds BLAS to one thread)."""
    return time.thread_time()


def cpu_candidates() -> tuple[str, ...]:
    """The CPU routes `auto` measures: gram_topk only where scipy (its LAPACK bindings) is installed."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        return tuple(r for r in CPU_ROUTES if r != "gram_topk")
    return CPU_ROUTES


def preferred_route(shape, top: int, candidates: tuple[str, ...]) -> str:
    """The cost model's route: gram_topk when fewer vectors are kept than the smaller side (it skips forming the
    eigenbasis the store throws away), else the full Gram eigendecomposition."""
    if "gram_topk" in candidates and top < min(shape):
        return "gram_topk"
    return "gram" if "gram" in candidates else candidates[0]


def decide(times: dict[str, list[float]], prior: str) -> tuple[str, bool]:
    """(route, settled) from interleaved CPU timings (route -> one time per round, rounds run together): the
    fastest other route replaces the prior when its best time is CALIBRATION_MARGIN below the prior's and it beat
    the prior by that margin in at least two thirds of the rounds. Settled (more rounds would not change it) when
    the prior is the fastest, or the rival beat it by the margin in every round or in none."""
    best = {r: min(t) for r, t in times.items()}
    others = [r for r in best if r != prior]
    if not others:
        return prior, True
    rival = min(others, key=best.get)
    n = min(len(times[prior]), len(times[rival]))
    wins = sum(times[rival][k] * CALIBRATION_MARGIN < times[prior][k] for k in range(n))
    if best[prior] <= best[rival]:
        return prior, True
    if best[rival] * CALIBRATION_MARGIN < best[prior] and 3 * wins >= 2 * n:
        return rival, wins == n
    return prior, wins == 0


@contextlib.contextmanager
def one_blas_thread():
    """BLAS/LAPACK (numpy's, scipy's) and torch on one thread in this block; yields whether the limit holds."""
    import sys

    with contextlib.suppress(ImportError):  # load scipy's own OpenBLAS first, so that the limit reaches it
        import scipy.linalg.lapack  # noqa: F401
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without threadpoolctl (specdyn[fast]) the timings are the process's CPU time
        threadpool_limits = None
    if torch:
        torch.set_num_threads(1)
    try:
        if threadpool_limits is None:
            yield False
        else:
            with threadpool_limits(1):
                yield True
    finally:
        if torch:
            torch.set_num_threads(before)


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


def cache_key(shape, device: str = "cpu", top: int = 64) -> str:
    """The route cache's key of a shape: the route depends on the shape, the device and whether vectors are kept
    (not on the thread count: routes are timed on one thread)."""
    kept = "values" if top == 0 else ("all" if top >= min(shape) else "top")
    return f"{shape[0]}x{shape[1]}/{device}/{kept}/v{CACHE_VERSION}"


def cache_entry(route: str, cpu_s: dict[str, float] | None = None, measured: float | None = None) -> dict:
    """One route cache entry: the route, each timed route's best CPU seconds, and when (Unix time)."""
    return {"route": route, "cpu_s": dict(cpu_s or {}), "measured": time.time() if measured is None else measured}


def read_route_cache() -> dict[str, dict]:
    """The machine's route cache (key -> entry); empty where missing or unreadable."""
    try:
        table = json.loads(route_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in table.items() if isinstance(v, dict) and isinstance(v.get("route"), str)}


def cached_routes(shapes, top: int, device: str = "cpu") -> dict[str, dict]:
    """This machine's cached route per shape ("MxN" -> {"route", "measured", "age_s"}), for `specdyn info`."""
    table, now, out = read_route_cache(), time.time(), {}
    for shape in shapes:
        entry = table.get(cache_key(shape, device, top))
        if entry and isinstance(entry.get("measured"), int | float):
            out[f"{shape[0]}x{shape[1]}"] = {
                "route": entry["route"],
                "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(entry["measured"])),
                "age_s": round(now - entry["measured"]),
            }
    return out


@dataclass
class SVDEngine:
    """Computes Spectra by the fastest route for each shape.

    The first matrix of a shape never seen on this machine is timed by every candidate route (CPU time on one
    BLAS thread, interleaved rounds; see CALIBRATION_MARGIN) and the cost model's route is kept unless another is
    clearly faster; the choice is saved in `route_cache_path()`, so every matrix of a shape uses one route
    (results are reproducible run to run) and the measurement is paid once. A cached route whose matrices take
    RECHECK_FACTOR times its calibration is measured again. `route="gram"` etc. pins a route instead. Routes put
    in `chosen` beforehand (a store's) are used as given, and so are those in `fixed` (rows already written).
    `top=0` computes singular values only (no vectors), always by the float64 Gram matrix's eigenvalues.
    """

    top: int = 64
    device: str = "cpu"
    route: str = "auto"
    cache: bool = True
    recalibrate: bool = False  # measure again even where the cache has a choice (e.g. it was made under load)
    chosen: dict = field(default_factory=dict)  # shape -> route
    timings: dict = field(default_factory=dict)  # shape -> {route: [CPU seconds per round]}, measured in this run
    fixed: set = field(default_factory=set)  # shapes whose route may not change (a store's rows use it)

    def __post_init__(self):
        if self.route not in ("auto", *ROUTES):
            raise ValueError(f"unknown SVD route {self.route!r}")
        self.candidates = ("cuda",) if self.device.startswith("cuda") else cpu_candidates()
        self.fixed |= set(self.chosen)
        self._expected: dict = {}  # shape -> CPU seconds its route took when calibrated (for the re-check)
        self._slow: dict = {}  # shape -> observed seconds of its matrices this run, while they are slow
        self._recheck: set = set()  # shapes to measure again at their next matrix
        self._rechecked: set = set()

    def _key(self, shape) -> str:
        return cache_key(shape, self.device, self.top)

    def __call__(self, W: np.ndarray) -> Spectrum:
        """SVD of a 2-D array (computed in float32/float64); NaN/Inf input gives a NaN spectrum. A column-major
        float32 array (a transposed layout) is used as it is: every route computes the same from either."""
        W = np.asarray(W)
        if W.dtype != np.float32 or not (W.flags.c_contiguous or W.flags.f_contiguous):
            W = np.ascontiguousarray(W, dtype=np.float32)
        if min(W.shape) == 0:
            return nan_spectrum(W.shape, self.top)
        if self.top == 0 and not self.device.startswith("cuda"):
            try:
                return svd_values(W)
            except NonFinite:
                return nan_spectrum(W.shape, 0)
        route = self._route(W.shape)
        if route in GRAM_ROUTES:  # their Gram matrix shows NaN/Inf: no pass over W to look for them
            try:
                return self._timed(route, W)
            except NonFinite:
                return nan_spectrum(W.shape, self.top)
        if not all_finite(W):
            return nan_spectrum(W.shape, self.top)
        return self._timed(route, W) if route else self._calibrate(W)

    def _route(self, shape) -> str | None:
        """The route for this shape, or None where it must be measured."""
        if self.route != "auto":
            return self.route
        if shape in self._recheck:
            return None
        if shape in self.chosen:
            if shape not in self._expected:
                self._cached(shape)
            return self.chosen[shape]
        cached = self._cached(shape)  # also what the route cost when calibrated, for the re-check
        # `chosen` first: a store's recorded routes (prefilled by analyze) win over this machine's candidates.
        route = self.chosen.get(shape) or (self.candidates[0] if len(self.candidates) == 1 else None)
        route = route or cached
        if route is None and min(shape) <= THIN_K and "gram" in self.candidates:
            # A thin matrix's Gram matrix is k x k: that route is the cheapest by far, and timing every route on
            # a 10^8 x 1 tensor held each one's copies at once (8.7 GB for a 400 MB tensor, issue 17 item 17).
            route = "gram"
        if route:
            self.chosen[shape] = route
        return route

    def _timed(self, route: str, W: np.ndarray) -> Spectrum:
        """_run, observed against the route's calibration where it has one (the re-check)."""
        expected = self._expected.get(W.shape, {}).get(route) if self.route == "auto" else None
        if expected is None or W.shape in self._rechecked:
            return self._run(route, W)
        one = compute_threads() == 1  # then this thread's CPU time is the whole work, as when calibrating
        clock = calibration_clock if one else time.perf_counter
        t0 = clock()
        out = self._run(route, W)
        took = clock() - t0
        if took > RECHECK_FACTOR * expected * (1 if one else _busy()):
            slow = self._slow.setdefault(W.shape, [])
            slow.append(took)
            if len(slow) >= RECHECK_AFTER:
                self._recheck.add(W.shape)
        else:
            self._slow.pop(W.shape, None)
        return out

    def _calibrate(self, W: np.ndarray) -> Spectrum:
        """Time the candidate routes on W (interleaved rounds, CPU time on one BLAS thread), keep the cost model's
        route unless another is clearly faster, cache the choice; returns W's spectrum by the chosen route."""
        shape = W.shape
        prior = preferred_route(shape, self.top, self.candidates)
        alive = list(self.candidates)
        known = self._expected.get(shape) or {}
        if known and min(known.values()) > 0:  # a re-check: routes far slower when calibrated are not run again
            alive = [r for r in alive if r == prior or known.get(r, 0) <= CALIBRATION_DROP * min(known.values())]
        warm = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
        times: dict[str, list[float]] = {}
        results = {}
        best = prior
        with one_blas_thread() as exact:
            clock = calibration_clock if exact else time.process_time
            for r in alive:
                self._run(r, warm)  # imports (scipy, torch) and first-call costs are not the route's
            for k in range(CALIBRATION_ROUNDS[1]):
                for r in alive[k % len(alive) :] + alive[: k % len(alive)]:
                    t0 = clock()
                    results[r] = self._run(r, W)
                    times.setdefault(r, []).append(clock() - t0)
                if k == 0:  # a route far slower than the prior in the first round is not timed again
                    alive = [r for r in alive if r == prior or times[r][0] < CALIBRATION_DROP * times[prior][0]]
                best, settled = decide({r: times[r] for r in alive}, prior)
                if settled and k + 1 >= CALIBRATION_ROUNDS[0]:
                    break
        self._rechecked.add(shape)
        self._recheck.discard(shape)
        self._slow.pop(shape, None)
        self.timings[shape] = times
        cpu = {r: min(t) for r, t in times.items()}
        self._expected[shape] = cpu
        self._save(shape, best, cpu)
        if shape in self.fixed:  # a store's route stays (its rows use it); only the machine's cache learns
            best = self.chosen[shape]
            if best not in results:
                results[best] = self._run(best, W)
        self.chosen[shape] = best
        return results[best]

    def _cached(self, shape) -> str | None:
        """The machine's cached route for the shape (None: measure it); notes what each route cost then."""
        self._expected.setdefault(shape, {})
        if not self.cache or self.recalibrate:
            return None
        entry = read_route_cache().get(self._key(shape))
        if not entry or entry["route"] not in self.candidates:
            return None
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            self._expected[shape] = {r: float(t) for r, t in entry.get("cpu_s", {}).items()}
        return entry["route"]

    def _save(self, shape, route: str, cpu_s: dict[str, float]) -> None:
        if not self.cache:
            return
        path = route_cache_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                table = json.loads(path.read_text())
            except (OSError, ValueError):
                table = {}
            table[self._key(shape)] = cache_entry(route, {r: round(t, 6) for r, t in cpu_s.items()})
            atomic_write(path, json.dumps(table, indent=1, sort_keys=True))
        except (OSError, SpecdynError):
            pass  # a read-only home (or a link planted at the cache) only costs re-measuring next time

    def fix(self) -> None:
        """Keep every route chosen so far for the rest of the run (rows computed with them are being written)."""
        self.fixed |= set(self.chosen)

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
        if self.top == 0 and not self.device.startswith("cuda"):
            return {"all": "values"}
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
