"""Heavy-tailed spectral metrics with WeightWatcher 0.7.7's conventions (docs/method.md §10), from singular values.

Everything is a pure function of one matrix's singular values `s` (all of them) and its larger side `n_max`;
no SVD. The eigenvalues are lambda = s^2 (WeightWatcher's ESD of W^T W, unnormalised). The power-law fit is
WeightWatcher's own default (`pl_package="ww"`, its `WWFit`): a continuous power law p(x) ~ x^-alpha on
[xmin, max], alpha by maximum likelihood for every candidate xmin among the eigenvalues above 1e-5, and the
xmin of smallest Kolmogorov-Smirnov distance kept; fewer than 20 eigenvalues use its small-sample variant
(bias-corrected alpha, tails of at least 8).

Where WeightWatcher reports -1 for a failed fit, these functions return NaN.
"""

from __future__ import annotations

import math

import numpy as np

from specdyn.spectral.metrics import METRICS, metrics_of

EVALS_THRESH = 1e-5  # WW: eigenvalues at or below this are left out of the fit (not out of the norms)
SMALL_N = 20  # WW: fits on fewer eigenvalues use the small-sample objective
SMALL_N_KMIN = 8  # WW: the smallest tail the small-sample fit considers
WW_EPSILON = 1e-10  # WW: added to p and to the rank in its entropy

# The (checkpoint, matrix) arrays this module adds to a store, in store order (declared in spectral.metrics).
HEAVY_TAIL_METRICS = metrics_of("heavy_tail")
# Their WeightWatcher column names (for `specdyn export`), where they differ.
WW_COLUMNS = {m.name: m.column for m in METRICS.values() if m.column}


def eigenvalues(s: np.ndarray) -> np.ndarray:
    """lambda = s^2, ascending (WW's ESD order)."""
    return np.sort(np.asarray(s, dtype=np.float64) ** 2)


# Candidate xmins scanned at once by `_fit_standard`: a block of B candidates costs a B x N temporary.
SCAN_ELEMENTS = 1 << 18


# The cheap lower bound on a candidate's D looks at every BOUND_STRIDE-th point of its tail; the exact D is then
# computed only for candidates whose bound does not exceed the best D found (`power_law_fit`'s choice).
BOUND_STRIDE = 16
FIRST_EXACT = 32  # candidates of smallest bound computed exactly first, to find a good best D


def _fit_standard(x: np.ndarray, best_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """WW's `fit_power_law_standard`: alpha and KS distance D for every candidate xmin x[i], i < N - 1.

    WW loops over the candidates in Python; this scans blocks of them at once, each block over the tails from its
    first candidate on (the triangle, not the square), and takes (x_j / x_i)^(1 - alpha) as exp((1 - alpha)
    (log x_j - log x_i)), which numpy vectorizes: about 1e-16 from WW's power, 10-20x faster (docs/method.md §10).
    `best_only`: D is exact only where it may be the smallest (the first smallest is WW's choice); elsewhere it is
    inf. A candidate is skipped when the largest gap over every BOUND_STRIDE-th point of its tail, a lower bound on
    its D, already exceeds a D computed exactly: 3-4x less work on a 768-value spectrum."""
    n_all = len(x)
    logs = np.log(x)
    i = np.arange(n_all - 1)
    n = (n_all - i).astype(np.float64)
    tail_sums = np.cumsum(logs[::-1])[::-1][:-1]  # sum(logs[i:]) for each i
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alphas = 1 + n / (tail_sums - n * logs[:-1])
    Ds = np.ones(n_all - 1)
    fit = np.flatnonzero(alphas > 1)
    scan = _Scan(logs, alphas, 1 / n)
    if not best_only or len(fit) <= FIRST_EXACT:
        Ds[fit] = scan.ks(fit)
        return alphas, Ds
    bound = scan.ks(fit, BOUND_STRIDE)
    order = np.argsort(bound, kind="stable")
    first = np.sort(fit[order[:FIRST_EXACT]])
    Ds[fit] = np.inf
    Ds[first] = scan.ks(first)
    rest = np.setdiff1d(fit[bound <= Ds[first].min()], first)
    if len(rest):
        Ds[rest] = scan.ks(rest)
    return alphas, Ds


class _Scan:
    """The KS distances of candidate xmins (rows, ascending), in blocks of SCAN_ELEMENTS."""

    def __init__(self, logs: np.ndarray, alphas: np.ndarray, inv_n: np.ndarray):
        self.logs, self.alphas, self.inv_n = logs, alphas, inv_n

    def ks(self, rows: np.ndarray, stride: int = 1) -> np.ndarray:
        """max_j |theory - empirical| over each row's tail (every `stride`-th point of it: a lower bound)."""
        logs, alphas, inv_n, n_all = self.logs, self.alphas, self.inv_n, len(self.logs)
        out = np.zeros(len(rows))
        step = max(1, SCAN_ELEMENTS * stride // n_all)
        with np.errstate(over="ignore", invalid="ignore"):
            for k in range(0, len(rows), step):
                r = rows[k : k + step]
                j = np.arange(r[0], n_all, stride)
                # |theory - empirical| = |exp((1 - alpha)(log x_j - log x_i)) + (j - i) / n_i - 1|, built in place
                gap = logs[None, j] - logs[r, None]
                gap *= (1 - alphas[r])[:, None]
                np.exp(gap, out=gap)
                gap += inv_n[r, None] * j[None, :]
                gap -= (1 + r * inv_n[r])[:, None]
                np.abs(gap, out=gap)
                # columns before a candidate's own xmin are not part of its tail
                out[k : k + len(r)] = gap.max(axis=1, where=j[None, :] >= r[:, None], initial=0.0)
        return out


def _fit_small(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WW's `fit_powerlaw_smallN` candidates: the bias-corrected alpha = 1 + (n - 1) / sum(log(x / xmin)) and
    its D for every tail of 8 or more (D = 1 elsewhere); with no such tail, the whole sample is the one candidate.
    (WW also computes an objective D - 0.868 / sqrt(n), but its `WWFit.__init__` then re-selects by the smallest
    D, which is what its results report; we reproduce the results.)"""
    n_all = len(x)
    logs = np.log(x)
    alphas = np.zeros(n_all - 1)
    Ds = np.ones(n_all - 1)
    any_tail = False
    for i in range(n_all - 1):
        n = n_all - i
        if n < SMALL_N_KMIN:
            continue
        total = np.sum(logs[i:]) - n * logs[i]
        if total <= 1e-12:
            continue
        alpha = 1.0 + (n - 1.0) / total
        alphas[i] = alpha
        if alpha <= 1.0:
            continue
        theory = 1.0 - (x[i:] / x[i]) ** (1.0 - alpha)
        Ds[i] = float(np.max(np.abs(np.arange(n) / float(n) - theory)))
        any_tail = True
    if not any_tail and n_all > 1:
        total = np.sum(logs) - n_all * logs[0]
        if total > 1e-12:
            alphas[0] = 1.0 + (n_all - 1.0) / total
            Ds[0] = float(np.max(np.abs(np.arange(n_all) / float(n_all) - (1.0 - (x / x[0]) ** (1.0 - alphas[0])))))
    return alphas, Ds


def _failed() -> dict[str, float]:
    return {"alpha": math.nan, "xmin": math.nan, "D": math.nan, "num_pl_spikes": math.nan}


def power_law_fit(evals: np.ndarray) -> dict[str, float]:
    """WW's default power-law fit of an ESD: {"alpha", "xmin", "D", "num_pl_spikes"}; NaN where WW fails (fewer
    than two eigenvalues above 1e-5) or where no candidate xmin gives a power law (alpha <= 1 everywhere)."""
    evals = np.sort(np.asarray(evals, dtype=np.float64))
    x = evals[evals > EVALS_THRESH]
    if len(x) < 2 or not np.all(np.isfinite(x)):
        return _failed()
    alphas, Ds = _fit_small(x) if len(x) < SMALL_N else _fit_standard(x, best_only=True)
    i = int(np.argmin(Ds))  # WW: the first smallest D
    alpha = float(alphas[i])
    if not alpha > 1:
        return _failed()
    xmin = float(x[i])
    return {"alpha": alpha, "xmin": xmin, "D": float(Ds[i]), "num_pl_spikes": float(np.sum(evals >= xmin))}


def matrix_rank(s: np.ndarray, n_max: int) -> int:
    """WW's `matrix_rank`: singular values above max(s) * n_max * eps(float64) (numpy's matrix_rank default)."""
    s = np.asarray(s, dtype=np.float64)
    return int(np.count_nonzero(s > np.max(s) * n_max * np.finfo(np.float64).eps))


def matrix_entropy(s: np.ndarray, n_max: int) -> float:
    """WW's `matrix_entropy`: Shannon entropy of p = s^2 / sum(s^2) (+1e-10), over ln(numerical rank + 1e-10)."""
    s = np.asarray(s, dtype=np.float64)
    ev = s * s
    p = ev / np.sum(ev) + WW_EPSILON
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.sum(p * np.log(p)) / np.log(matrix_rank(s, n_max) + WW_EPSILON))


def heavy_tail_metrics(s: np.ndarray, n_max: int) -> dict[str, float]:
    """Every column of HEAVY_TAIL_METRICS for one matrix (s: all singular values, any order; n_max: its larger
    side). NaN everywhere for a NaN/Inf or all-zero spectrum."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or not np.all(np.isfinite(s)) or not np.any(s > 0):
        return dict.fromkeys(HEAVY_TAIL_METRICS, math.nan)
    ev = eigenvalues(s)
    fit = power_law_fit(ev)
    alpha = fit["alpha"]
    log_spectral = math.log10(ev[-1])
    with np.errstate(over="ignore"):
        log_alpha_norm = math.log10(np.sum(ev**alpha)) if not math.isnan(alpha) else math.nan
    return {
        "alpha": alpha,
        "alpha_weighted": alpha * log_spectral,
        "log_alpha_norm": log_alpha_norm,
        "log_norm": math.log10(np.sum(ev)),
        "log_spectral_norm": log_spectral,
        "entropy": matrix_entropy(np.sqrt(ev), n_max),
        "matrix_rank": float(matrix_rank(np.sqrt(ev), n_max)),
        "num_pl_spikes": fit["num_pl_spikes"],
        "pl_xmin": fit["xmin"],
        "pl_ks_distance": fit["D"],
    }


def heavy_tail_table(sv_rows: np.ndarray, n_max: int) -> dict[str, np.ndarray]:
    """heavy_tail_metrics for each row of a (checkpoint, k) array of singular values: name -> (checkpoint,)."""
    out = {name: np.full(len(sv_rows), np.nan) for name in HEAVY_TAIL_METRICS}
    for i, s in enumerate(sv_rows):
        for name, v in heavy_tail_metrics(s, n_max).items():
            out[name][i] = v
    return out


def ww_conv_eigenvalues(kernel: np.ndarray) -> tuple[np.ndarray, int]:
    """WeightWatcher's ESD of a conv kernel (c_out, c_in, kh, kw), for comparison with WW on one checkpoint:
    the eigenvalues of every kh x kw tap slice W[:, :, i, j], scaled by 1/2 (WW multiplies W by sqrt(1/2)),
    pooled; and the larger channel count (its n_max). specdyn's store instead holds the SVD of the flattened
    c_out x (c_in kh kw) matrix (docs/method.md §10.3). Costs kh*kw SVDs, so it is not computed by analyze."""
    k = np.asarray(kernel, dtype=np.float64)
    c_out, c_in = k.shape[:2]
    taps = k.reshape(c_out, c_in, -1)
    evals = [np.linalg.svd(taps[:, :, t] * math.sqrt(0.5), compute_uv=False) ** 2 for t in range(taps.shape[-1])]
    return np.sort(np.concatenate(evals)), max(c_out, c_in)


def heavy_tail_from_evals(evals: np.ndarray, n_max: int) -> dict[str, float]:
    """heavy_tail_metrics from an ESD given as eigenvalues (e.g. `ww_conv_eigenvalues`)."""
    return heavy_tail_metrics(np.sqrt(np.clip(np.asarray(evals, dtype=np.float64), 0, None)), n_max)
