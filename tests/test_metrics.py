"""Spectral metrics against direct, loop-based implementations of docs/method.md on matrices with known SVD."""

import math

import numpy as np
import pytest
import torch

from specdyn.spectral import metrics


def known_svd(m, n, s, seed=0):
    """W = U diag(s) V^T with random orthonormal U (m x k), V (n x k)."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return U @ np.diag(s) @ V.T, U, V


def ref_erank(s):
    # docs/method.md 1.2, written with torch as the paper's code does
    s = torch.tensor(s, dtype=torch.float64) + 1e-10
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()) / len(s))


def ref_count90(s):
    s = np.asarray(s, dtype=np.float64) + 1e-10
    p = s / s.sum()
    total = 0.0
    for i, x in enumerate(p):
        total += x
        if total > 0.9:
            return (i + 1) / len(s)


def ref_stable_rank(s):
    s = np.asarray(s, dtype=np.float64) + 1e-10
    return sum(x * x for x in s) / s[0] ** 2 / len(s)


def ref_gini(s):
    k = len(s)
    return sum(abs(a - b) for a in s for b in s) / (2 * k * k * np.mean(s))


SPECTRA = {
    "uniform": np.ones(12),
    "rank1": np.r_[3.0, np.zeros(11)],
    "random": np.sort(np.random.default_rng(1).uniform(0.01, 5, 12))[::-1],
    "decaying": 2.0 ** -np.arange(12),
}


@pytest.mark.parametrize("name", SPECTRA)
def test_metrics_match_reference_on_known_svd(name):
    s_true = SPECTRA[name]
    W, _, _ = known_svd(20, 12, s_true)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(s, s_true, atol=1e-12)
    assert metrics.effective_rank(s) == pytest.approx(ref_erank(s), rel=1e-12)
    assert metrics.count90(s) == pytest.approx(ref_count90(s))
    assert metrics.stable_rank(s) == pytest.approx(ref_stable_rank(s), rel=1e-12)
    assert metrics.gini(s) == pytest.approx(ref_gini(s), rel=1e-12)
    assert metrics.frobenius_norm(s) == pytest.approx(np.linalg.norm(W, "fro"), rel=1e-12)
    assert metrics.spectral_norm(s) == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)
    assert metrics.nuclear_norm(s) == pytest.approx(np.linalg.norm(W, "nuc"), rel=1e-12)


def test_known_answers():
    k = 12
    assert metrics.effective_rank(np.ones(k)) == pytest.approx(1.0)
    assert metrics.effective_rank(np.r_[1.0, np.zeros(k - 1)]) == pytest.approx(1 / k, rel=1e-6)
    assert metrics.count90(np.ones(k)) == pytest.approx((math.floor(0.9 * k) + 1) / k)
    assert metrics.stable_rank(np.ones(k)) == pytest.approx(1.0)
    assert metrics.gini(np.ones(k)) == pytest.approx(0.0)


def test_gini_matches_the_pairwise_definition_on_a_long_spectrum():
    s = np.sort(np.random.default_rng(2).lognormal(0, 1, 300))[::-1]
    assert metrics.gini(s) == pytest.approx(ref_gini(s), rel=1e-12)


def test_batched_metrics_equal_per_row():
    s = np.stack(list(SPECTRA.values()))
    for fn in (metrics.effective_rank, metrics.count90, metrics.stable_rank, metrics.gini):
        np.testing.assert_allclose(fn(s), [fn(row) for row in s])


def test_nonfinite_spectrum_gives_nan_metrics():
    out = metrics.spectrum_metrics(np.array([1.0, np.nan]))
    assert set(out) == set(metrics.SPECTRUM_METRICS) and all(math.isnan(v) for v in out.values())


def test_sva_identity_sign_flips_and_reference():
    W, U, V = known_svd(15, 9, np.linspace(5, 1, 9))
    np.testing.assert_allclose(np.diag(metrics.sva(U, V, U, V)), 1.0, atol=1e-12)
    flip = np.where(np.random.default_rng(3).random(9) < 0.5, -1.0, 1.0)
    np.testing.assert_allclose(metrics.sva(U * flip, V * flip, U, V), metrics.sva(U, V, U, V), atol=1e-12)
    # against the definition A_ij = |(u_i^x . u_j^y)(v_i^x . v_j^y)|
    W2, U2, V2 = known_svd(15, 9, np.linspace(5, 1, 9), seed=7)
    A = metrics.sva(U, V, U2, V2)
    for i in range(9):
        for j in range(9):
            assert A[i, j] == pytest.approx(abs((U[:, i] @ U2[:, j]) * (V[:, i] @ V2[:, j])))
    np.testing.assert_allclose(metrics.sva_diag(U, V, U2, V2), np.diag(A))


def test_scores():
    assert metrics.score(np.eye(12).diagonal()) == pytest.approx(1.0)
    assert metrics.score(np.r_[np.ones(10), np.zeros(5)]) == pytest.approx(1.0)
    assert metrics.score(np.r_[0.5, np.nan]) == pytest.approx(0.5)  # fewer than 10 terms (k < 10)
    assert np.isnan(metrics.score(np.full(4, np.nan)))
    _, U, _ = known_svd(20, 20, np.ones(20))
    assert metrics.subspace_overlap(U, U) == pytest.approx(1.0)
    assert metrics.subspace_overlap(U[:, :10], U[:, 10:]) == pytest.approx(0.0, abs=1e-12)
    # a rotation inside the top-10 subspace keeps the overlap (robust to singular values crossing)
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 10)))
    assert metrics.subspace_overlap(U[:, :10] @ Q, U[:, :10]) == pytest.approx(1.0)


def test_alignment_identity_and_barrier():
    _, U, _ = known_svd(16, 16, np.ones(16))
    assert metrics.score(metrics.alignment_diag(U, U)) == pytest.approx(1.0)
    assert metrics.barrier(np.linspace(2.0, 1.0, 11)) == pytest.approx(0.0, abs=1e-12)
    y = np.linspace(0, 1, 11) + np.r_[0, 0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0]
    assert metrics.barrier(y) == pytest.approx(0.5)
    assert metrics.barrier(1 - 0.2 * np.sin(np.linspace(0, np.pi, 11))) < 0  # signed


def test_every_declared_metric_is_documented_where_its_anchor_points():
    """Each Metric's `doc` names a heading of docs/ (GitHub's anchor of it), and docs/store.md lists its array."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"

    def slug(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    store_md = (docs / "store.md").read_text()
    for m in metrics.METRICS.values():
        page, _, anchor = m.doc.partition("#")
        headings = {slug(h) for h in re.findall(r"^#+ (.*)$", (docs / page).read_text(), flags=re.M)}
        assert anchor in headings, (m.name, m.doc)
        assert f"| `{m.name}` |" in store_md, m.name
        assert (m.fn is not None) == (m.source == "spectrum"), m.name
