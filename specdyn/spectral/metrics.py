"""Spectral measurements of docs/method.md, as pure numpy functions of singular values and vectors.

Conventions: `s` holds singular values in descending order along its last axis (leading axes are batch axes);
`U` (m, r) and `V` (n, r) hold singular vectors as columns, in the same order. Everything here is derived from
one SVD per matrix; nothing calls an SVD.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# docs/method.md adds 1e-10 to s before taking entropies and ratios (its helpers do it in place, so the paper's
# stored s drift by a few 1e-10; we add it to a copy and store s untouched).
EPS = 1e-10
SCORE_RANK = 10  # docs/method.md 1.7: every stability/alignment score is the mean of the first 10 diagonal terms.


def _k(s: np.ndarray) -> int:
    return s.shape[-1]


def _undefined_at_zero(s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """NaN where the matrix is zero (s_1 = 0): a shape measure of no spectrum at all is undefined
    (docs/method.md §1, zero-matrix rule), not the uniform spectrum that adding EPS to zeros would pretend."""
    return np.where(np.asarray(s)[..., 0] > 0, values, np.nan)


def effective_rank(s: np.ndarray) -> np.ndarray:
    """Normalized entropy effective rank (Roy & Vetterli on sigma, docs/method.md 1.2), in [1/k, 1].

    >>> float(effective_rank(np.ones(4)))
    1.0
    """
    raw = np.asarray(s, dtype=np.float64)
    s = raw + EPS
    p = s / s.sum(axis=-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(axis=-1)
    # exp(entropy) <= k exactly; rounding can exceed it by an ulp (a uniform spectrum gave 1.0000000000000004)
    return _undefined_at_zero(raw, np.minimum(np.exp(entropy) / _k(s), 1.0))


def count90(s: np.ndarray) -> np.ndarray:
    """Fraction of singular values needed to hold 90% of the sum of sigma (docs/method.md 1.3 `sv_count`)."""
    raw = np.asarray(s, dtype=np.float64)
    s = raw + EPS
    p = s / s.sum(axis=-1, keepdims=True)
    first = np.argmax(np.cumsum(p, axis=-1) > 0.9, axis=-1)
    return _undefined_at_zero(raw, (first + 1) / _k(s))


def stable_rank(s: np.ndarray) -> np.ndarray:
    """Normalized stable rank sum(s^2) / s_1^2 / k (docs/method.md 1.4 `sv_ratio`)."""
    raw = np.asarray(s, dtype=np.float64)
    s = raw + EPS
    return _undefined_at_zero(raw, np.minimum((s**2).sum(axis=-1) / s[..., 0] ** 2 / _k(s), 1.0))


def spectral_norm(s: np.ndarray) -> np.ndarray:
    return np.asarray(s, dtype=np.float64)[..., 0]


def frobenius_norm(s: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(s, dtype=np.float64) ** 2).sum(axis=-1))


def nuclear_norm(s: np.ndarray) -> np.ndarray:
    return np.asarray(s, dtype=np.float64).sum(axis=-1)


def gini(s: np.ndarray) -> np.ndarray:
    """Gini coefficient of the singular values (docs/method.md 1.8). The sum of |s_i - s_j| over all pairs is
    2 sum_i (2i - k - 1) x_i over the values sorted ascending (i = 1..k): O(k log k) instead of a k x k matrix."""
    s = np.asarray(s, dtype=np.float64)
    k = _k(s)
    diffs = 2 * (np.sort(s, axis=-1) * (2 * np.arange(1, k + 1) - k - 1)).sum(axis=-1)
    mean = s.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined_at_zero(s, diffs / (2 * k * k * np.where(mean > 0, mean, 1.0)))


@dataclass(frozen=True)
class Metric:
    """One measurement, declared once: the store's layout, analyze, derive, `SpectralStore.metric`, info, export,
    the report, plot labels and the callbacks' summaries all take it from `METRICS` (docs/architecture.md)."""

    name: str  # the store array and the name users type
    label: str  # axis label on figures
    range: str  # as docs/store.md states it
    doc: str  # where docs/method.md defines it (file#anchor)
    unit: bool = False  # lives in [0, 1]: drawn on one fixed [0, 1] colour scale
    # how it is computed: "spectrum": `fn` of one matrix's singular values (descending, float64), when a row is
    # written and, for stores made before it existed, by `specdyn derive` from the stored ones; "heavy_tail":
    # WeightWatcher's fit of the stored singular values (spectral.heavy_tail, by derive); "derived": against
    # other checkpoints' vectors (spectral.rows.derive_stability, by derive); "base": against a base model
    # (spectral.relative, by analyze --base; NaN in stores analyzed without one)
    source: str = "spectrum"
    fn: Callable[[np.ndarray], np.ndarray] | None = None
    axis: str = "matrix"  # the store's second dimension: "matrix", or "pair" (alignment)
    column: str | None = None  # its name in `specdyn export`'s WeightWatcher-like table, where WW's differs
    summary: str | None = None  # training callbacks log its mean over matrices ("mean"), also per kind ("kind")


_M = "method.md#"
_WW = _M + "101-the-power-law-fit-alpha-pl_xmin-pl_ks_distance-num_pl_spikes"
_WW_NORMS = _M + "102-norms-entropy-and-rank"
_BASE = _M  # §11, relative to a base model
_DECLARED = (
    Metric("effective_rank", "normalized effective rank", "[1/k, 1]",
           _M + "12-normalized-effective-rank-effective_rank", unit=True, fn=effective_rank, summary="mean"),
    Metric("count90", "rank holding 90% of Σσ / k", "(0, 1]", _M + "13-count90-the-papers-sv_count", unit=True,
           fn=count90),
    Metric("stable_rank", "normalized stable rank", "[1/k, 1]",
           _M + "14-normalized-stable-rank-stable_rank-the-papers-sv_ratio", unit=True, fn=stable_rank,
           summary="mean"),
    Metric("spectral_norm", "spectral norm ‖W‖₂", "≥ 0", _M + "11-singular-values-and-norms", fn=spectral_norm),
    Metric("frobenius_norm", "Frobenius norm ‖W‖_F", "≥ 0", _M + "11-singular-values-and-norms", fn=frobenius_norm),
    Metric("nuclear_norm", "nuclear norm ‖W‖_*", "≥ 0", _M + "11-singular-values-and-norms", fn=nuclear_norm),
    Metric("gini", "Gini coefficient of σ", "[0, 1)", _M + "18-gini-coefficient-of-the-singular-values-gini",
           unit=True, fn=gini),
    Metric("stability_score", "stability score (vs final)", "[0, 1]", _M + "17-scores", unit=True, source="derived"),
    Metric("subspace_overlap", "top-10 subspace overlap (vs final)", "[0, 1]",
           _M + "15-stability-singular-vector-agreement-sva-over-time", unit=True, source="derived"),
    Metric("stability_prev_score", "stability score (vs previous)", "[0, 1]", _M + "17-scores", unit=True,
           source="derived", summary="mean"),
    Metric("alpha", "power-law α of the ESD", "> 1", _WW, source="heavy_tail", summary="kind"),
    Metric("alpha_weighted", "α · log₁₀ λ_max", "real", _WW_NORMS, source="heavy_tail"),
    Metric("log_alpha_norm", "log₁₀ Σ λ^α", "real", _WW_NORMS, source="heavy_tail"),
    Metric("log_norm", "log₁₀ ‖W‖²_F", "real", _WW_NORMS, source="heavy_tail"),
    Metric("log_spectral_norm", "log₁₀ ‖W‖²₂", "real", _WW_NORMS, source="heavy_tail"),
    Metric("entropy", "matrix entropy (WeightWatcher)", "[0, ~1]", _WW_NORMS, source="heavy_tail"),
    Metric("matrix_rank", "numerical rank", "[0, k]", _WW_NORMS, source="heavy_tail"),
    Metric("num_pl_spikes", "eigenvalues in the power-law tail", "[0, k]", _WW, source="heavy_tail"),
    Metric("pl_xmin", "power-law xmin", "> 0", _WW, source="heavy_tail", column="xmin"),
    Metric("pl_ks_distance", "power-law KS distance", "[0, 1]", _WW, source="heavy_tail", column="D"),
    Metric("delta_frobenius_norm", "‖ΔW‖_F (vs base)", "≥ 0", _BASE + "111-spectrum-of-the-update-delta_",
           source="base"),
    Metric("delta_spectral_norm", "‖ΔW‖₂ (vs base)", "≥ 0", _BASE + "111-spectrum-of-the-update-delta_", source="base"),
    Metric("delta_effective_rank", "normalized effective rank of ΔW", "[1/k, 1]",
           _BASE + "111-spectrum-of-the-update-delta_", unit=True, source="base"),
    Metric("delta_stable_rank", "normalized stable rank of ΔW", "[1/k, 1]", _BASE + "111-spectrum-of-the-update-delta_",
           unit=True, source="base"),
    Metric("base_overlap", "top-10 subspace overlap (vs base)", "[0, 1]",
           _BASE + "112-overlap-with-the-base-base_overlap", unit=True, source="base"),
    Metric("alignment_score", "alignment score", "[0, 1]", _M + "16-alignment-between-neighbouring-layers",
           unit=True, source="derived", axis="pair"),
)  # fmt: skip
# Every declared metric by name, in the store's order.
METRICS: dict[str, Metric] = {m.name: m for m in _DECLARED}


def metrics_of(source: str | None = None, axis: str = "matrix") -> tuple[str, ...]:
    """The names of the declared metrics computed one way (`Metric.source`; None: all) along one store axis."""
    return tuple(m.name for m in METRICS.values() if m.axis == axis and source in (None, m.source))


# Per-matrix scalar metrics of one spectrum (name -> fn of s), as declared at import, in the store's order.
SPECTRUM_METRICS = {m.name: m.fn for m in METRICS.values() if m.source == "spectrum"}


def spectrum_metrics(s: np.ndarray) -> dict[str, float]:
    """All per-matrix scalar metrics of one spectrum; NaN everywhere if s holds a NaN or Inf."""
    s = np.asarray(s, dtype=np.float64)
    declared = [m for m in METRICS.values() if m.source == "spectrum"]
    if s.size == 0 or not np.all(np.isfinite(s)):
        return {m.name: math.nan for m in declared}
    return {m.name: float(m.fn(s)) for m in declared}


def sva(Ux, Vx, Uy, Vy) -> np.ndarray:
    """Singular vector agreement |(Ux^T Uy) * (Vx^T Vy)| (docs/method.md 1.5); rows index x's ranks, columns y's."""
    return np.abs((Ux.T @ Uy) * (Vx.T @ Vy))


def sva_diag(Ux, Vx, Uy, Vy) -> np.ndarray:
    """The diagonal of `sva` without forming the matrix: |<u_i^x, u_i^y><v_i^x, v_i^y>|."""
    r = min(Ux.shape[-1], Uy.shape[-1])
    return np.abs((Ux[:, :r] * Uy[:, :r]).sum(axis=0) * (Vx[:, :r] * Vy[:, :r]).sum(axis=0))


def subspace_overlap(Ux, Uy, rank: int = SCORE_RANK) -> float:
    """||Ux[:, :r]^T Uy[:, :r]||_F^2 / r: overlap of the top-r left subspaces, blind to order within them."""
    r = min(rank, Ux.shape[-1], Uy.shape[-1])
    return float(np.sum((Ux[:, :r].T @ Uy[:, :r]) ** 2) / r)


def score(diag: np.ndarray, rank: int = SCORE_RANK) -> np.ndarray:
    """Mean of the first `rank` diagonal entries along the last axis (docs/method.md 1.7); NaN padding ignored."""
    d = np.asarray(diag, dtype=np.float64)[..., :rank]
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d)
        total = np.where(valid, d, 0.0).sum(axis=-1)
        count = valid.sum(axis=-1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def alignment_diag(U_prev: np.ndarray, V_next: np.ndarray) -> np.ndarray:
    """|<v_i^next, u_i^prev>| for i < r (docs/method.md 1.6, diagonal pairing): output space of the previous layer
    against the input space of the next. Both are (d, r) with a shared dimension d."""
    r = min(U_prev.shape[-1], V_next.shape[-1])
    return np.abs((U_prev[:, :r] * V_next[:, :r]).sum(axis=0))


def barrier(y) -> float:
    """Signed loss barrier of a curve on an even alpha grid (docs/method.md 1.10): the largest excess of the
    interior points over the straight line between the endpoints."""
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    if n < 3:
        return 0.0
    line = y[0] + (y[-1] - y[0]) * np.arange(n) / (n - 1)
    return float(np.max(y[1:-1] - line[1:-1]))
