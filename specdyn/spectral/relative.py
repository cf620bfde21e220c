"""Measurements of a fine-tuned matrix W against its base W_base (docs/method.md §11), as pure numpy functions.

The spectrum of ΔW = W − W_base gives the delta_* metrics; for a LoRA update ΔW = L R of rank r it comes from thin
QRs of L and Rᵀ and an r × r SVD, never an m × n one. `base_overlap` compares W's top-10 left singular subspace
with the base's; intruder dimensions (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of
Equivalence", arXiv 2410.21228) are top singular vectors of W whose largest |cosine| with every left singular
vector of W_base is below a threshold ε.
"""

import numpy as np

from specdyn.spectral.metrics import effective_rank, frobenius_norm, spectral_norm, stable_rank, subspace_overlap

# float64 SVDs below this many entries (exact thresholds in tests and small models); float32 above, where a
# float64 decomposition of a 4096 x 4096 matrix costs several times as much and |cos| near ε is rare.
FLOAT64_ENTRIES = 1 << 22

DELTA_METRICS = {
    "delta_frobenius_norm": frobenius_norm,
    "delta_spectral_norm": spectral_norm,
    "delta_effective_rank": effective_rank,
    "delta_stable_rank": stable_rank,
}


def _precision(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64 if a.size <= FLOAT64_ENTRIES else np.float32, copy=False)


def lowrank_singular_values(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The nonzero-capable singular values of left @ right (m x r times r x n): thin QRs left = Q_l R_l and
    rightᵀ = Q_r R_r give left @ right = Q_l (R_l R_rᵀ) Q_rᵀ, whose singular values are those of the small core."""
    _, r_left = np.linalg.qr(np.asarray(left, dtype=np.float64))
    _, r_right = np.linalg.qr(np.asarray(right, dtype=np.float64).T)
    return np.linalg.svd(r_left @ r_right.T, compute_uv=False)


def dense_singular_values(delta: np.ndarray) -> np.ndarray:
    return np.linalg.svd(_precision(delta), compute_uv=False).astype(np.float64)


def delta_metrics(s: np.ndarray, k: int) -> dict[str, float]:
    """The delta_* metrics of ΔW's singular values `s`, padded with zeros to the matrix's k = min(m, n) (a rank-r
    update's other singular values are exactly zero), so they compare with a full fine-tune's. ΔW = 0 gives norms
    0 and NaN ranks (docs/method.md §1, zero-matrix rule)."""
    full = np.zeros(k)
    s = np.sort(np.asarray(s, dtype=np.float64))[::-1][:k]
    full[: s.shape[0]] = s
    if not np.all(np.isfinite(full)):
        return {name: float("nan") for name in DELTA_METRICS}
    return {name: float(fn(full)) for name, fn in DELTA_METRICS.items()}


def left_basis(W: np.ndarray) -> np.ndarray:
    """Every left singular vector of W (thin SVD: min(m, n) columns)."""
    return np.linalg.svd(_precision(W), full_matrices=False)[0]


def base_overlap(U: np.ndarray, U_base: np.ndarray) -> float:
    """||U[:, :10]ᵀ U_base[:, :10]||_F² / 10: W's top-10 left subspace against the base's (as subspace_overlap)."""
    return subspace_overlap(U, U_base)


def max_cosines(U_top: np.ndarray, U_base: np.ndarray) -> np.ndarray:
    """For each column of U_top (unit vectors), its largest |cosine| with any column of U_base."""
    return np.abs(U_base.T @ U_top.astype(U_base.dtype, copy=False)).max(axis=0)


def intruder_counts(cosines: np.ndarray, epsilons) -> np.ndarray:
    """How many of the examined vectors have a largest |cosine| below each ε (Shuttleworth et al.)."""
    eps = np.asarray(epsilons, dtype=np.float64)
    return (np.asarray(cosines)[None, :] < eps[:, None]).sum(axis=1).astype(np.float64)
