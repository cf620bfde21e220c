"""Heavy-tailed metrics (docs/method.md §10): against WeightWatcher 0.7.7 itself on the same small models, against
synthetic Pareto spectra of known exponent, and against an independent brute-force fit."""

import math

import numpy as np
import pytest
import torch

from specdyn.spectral import heavy_tail as ht

COLUMNS = ["alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm", "entropy", "matrix_rank"]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),  # standard fit (64 eigenvalues)
        torch.nn.ReLU(),
        torch.nn.Linear(128, 96),
        torch.nn.Linear(96, 12),  # small-sample fit (12 eigenvalues)
        torch.nn.Linear(12, 40),
        torch.nn.Conv2d(3, 16, 3),  # WW's per-tap conv convention
    )


@pytest.fixture(scope="module")
def ww_frame():
    ww = pytest.importorskip("weightwatcher")
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    model = _model()
    return model, ww.WeightWatcher(model=model).analyze(plot=False)


def _ours(module) -> dict:
    W = module.weight.detach().double().numpy()
    if W.ndim == 4:
        return ht.heavy_tail_from_evals(*ht.ww_conv_eigenvalues(W))
    return ht.heavy_tail_metrics(np.linalg.svd(W, compute_uv=False), max(W.shape))


def test_agrees_with_weightwatcher(ww_frame):
    model, df = ww_frame
    layers = [m for m in model if hasattr(m, "weight")]
    assert len(df) == len(layers)
    for (_, row), layer in zip(df.iterrows(), layers):
        ours = _ours(layer)
        assert ours["pl_xmin"] == pytest.approx(row["xmin"], rel=1e-12)  # the same xmin was chosen
        assert ours["alpha"] == pytest.approx(row["alpha"], abs=1e-6)
        assert ours["pl_ks_distance"] == pytest.approx(row["D"], abs=1e-9)
        assert ours["num_pl_spikes"] == row["num_pl_spikes"]
        for col in COLUMNS:
            assert ours[col] == pytest.approx(row[col], abs=1e-9), col


@pytest.mark.parametrize("route, alpha_tol, tol", [("gram", 1e-6, 1e-9), ("lapack", 1e-4, 1e-5)])
def test_store_alpha_agrees_with_weightwatcher(ww_frame, tmp_path, route, alpha_tol, tol):
    """Through the whole pipeline: a checkpoint analyzed into a store; the store's columns for the linear layers
    match WW's (the conv is flattened differently, §10.3). The float64-Gram route's singular values agree with
    WW's float64 SVD to 1e-15, so alpha agrees to 1e-6; float32 LAPACK's (1e-6 relative) move alpha by ~1e-5."""
    from safetensors.torch import save_file

    from specdyn import AnalyzeOptions, open_store
    from specdyn.analyze import analyze

    model, df = ww_frame
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "step_000010.safetensors")
    analyze([run], options=AnalyzeOptions(svd_route=route), show_progress=False)
    st = open_store(run / "specdyn.zarr")
    for (_, row), name in zip(df.iterrows(), ["0.weight", "2.weight", "3.weight", "4.weight"]):
        j = st.matrices.index(name)
        assert st.metric("pl_xmin")[-1, j] == pytest.approx(row["xmin"], rel=1e-5)
        assert st.metric("num_pl_spikes")[-1, j] == row["num_pl_spikes"]
        assert st.metric("alpha")[-1, j] == pytest.approx(row["alpha"], abs=alpha_tol)
        for col in COLUMNS:
            assert st.metric(col)[-1, j] == pytest.approx(row[col], abs=tol), col


def _pareto(alpha: float, n: int, seed: int) -> np.ndarray:
    """n draws of a continuous power law p(x) ~ x^-alpha on [1, inf) by inverse CDF."""
    u = np.random.default_rng(seed).random(n)
    return (1 - u) ** (-1 / (alpha - 1))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_recovers_pareto_exponent(alpha):
    estimates = [ht.power_law_fit(_pareto(alpha, 2000, seed))["alpha"] for seed in range(5)]
    # measured: within 0.6% (the mean of 5 samples of 2000 draws)
    assert np.mean(estimates) == pytest.approx(alpha, abs=0.03 * alpha)


def test_pareto_tail_above_a_bulk():
    """A power-law tail above a uniform bulk: the fit finds the tail's xmin and exponent."""
    rng = np.random.default_rng(0)
    bulk = rng.uniform(0.01, 0.5, 3000)
    tail = _pareto(2.5, 600, 1)
    fit = ht.power_law_fit(np.concatenate([bulk, tail]))
    assert fit["xmin"] >= 0.5
    assert fit["alpha"] == pytest.approx(2.5, abs=0.25)
    # metrics from singular values: lambda = s^2
    out = ht.heavy_tail_metrics(np.sqrt(np.concatenate([bulk, tail])), 4000)
    assert out["alpha"] == pytest.approx(fit["alpha"])


def test_fit_matches_brute_force():
    """Independent computation: MLE alpha and KS distance for each xmin written from the definitions."""
    x = np.sort(_pareto(3.0, 60, 3) * 0.1)
    best = (math.inf, None, None)
    for i in range(len(x) - 1):
        tail = x[i:]
        a = 1 + len(tail) / np.sum(np.log(tail / x[i]))
        cdf = 1 - (tail / x[i]) ** (1 - a)
        D = np.max(np.abs(cdf - np.arange(len(tail)) / len(tail)))
        if D < best[0]:
            best = (D, a, x[i])
    fit = ht.power_law_fit(x)
    assert fit["D"] == pytest.approx(best[0], rel=1e-12)
    assert fit["alpha"] == pytest.approx(best[1], rel=1e-12)
    assert fit["xmin"] == best[2]


def test_norms_and_rank_from_definitions():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((30, 50))
    W[0] = W[1]  # rank 29
    s = np.linalg.svd(W, compute_uv=False)
    out = ht.heavy_tail_metrics(s, 50)
    ev = s**2
    assert out["log_norm"] == pytest.approx(math.log10(np.sum(W**2)), abs=1e-12)
    assert out["log_spectral_norm"] == pytest.approx(math.log10(np.linalg.norm(W, 2) ** 2), abs=1e-12)
    assert out["matrix_rank"] == np.linalg.matrix_rank(W) == 29
    assert out["log_alpha_norm"] == pytest.approx(math.log10(np.sum(ev ** out["alpha"])), abs=1e-12)
    p = ev / ev.sum() + 1e-10
    assert out["entropy"] == pytest.approx(-np.sum(p * np.log(p)) / math.log(29 + 1e-10), abs=1e-12)


def test_degenerate_spectra_are_nan():
    for s in (np.zeros(5), np.array([np.nan, 1.0]), np.zeros(0)):
        assert all(math.isnan(v) for v in ht.heavy_tail_metrics(s, 5).values())
    # every eigenvalue below WW's 1e-5 threshold: the fit fails (WW reports -1), the norms do not
    out = ht.heavy_tail_metrics(np.full(10, 1e-3), 10)
    assert math.isnan(out["alpha"]) and out["log_norm"] == pytest.approx(math.log10(10 * 1e-6))


def _ww_loop(x):
    """WW's `fit_power_law_standard` as WW writes it: a Python loop over candidate xmins, numpy's power."""
    n_all = len(x)
    logs = np.log(x)
    alphas, Ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(n_all - 1):
            n = float(n_all - i)
            alphas[i] = alpha = 1 + n / (np.sum(logs[i:]) - n * logs[i])
            if alpha > 1:
                Ds[i] = np.max(np.abs(1 - (x[i:] / x[i]) ** (-alpha + 1) - np.arange(n) / n))
    return alphas, Ds


def _heavy_spectrum(n: int, seed: int | None = None, power: int = 8, block: int = 256) -> np.ndarray:
    """The n sorted eigenvalues of W^T W for a 2n x n Gaussian W with columns scaled by 1 + 5 u^power (power 8: a
    few heavy columns, a bulk and a heavy tail), W block-diagonal so that its SVD costs blocks of `block` columns,
    not one n^3 (at n=3000: ~2 CPU s, not 45). Seeded by `seed`, default n."""
    rng = np.random.default_rng(n if seed is None else seed)
    parts = []
    for start in range(0, n, block):
        c = min(block, n - start)
        A = rng.standard_normal((2 * c, c)) * (1 + 5 * rng.random(c) ** power)
        parts.append(np.linalg.svd(A, compute_uv=False) ** 2)
    return np.sort(np.concatenate(parts))


@pytest.mark.parametrize("n", [20, 64, 768, 3000])
def test_blocked_scan_matches_ww_loop(n, monkeypatch):
    """The blocked, vectorized xmin scan gives WW's loop's alphas and Ds at the sizes analyze meets, across block
    boundaries (a small block size forces many blocks), and picks the same xmin."""
    x = _heavy_spectrum(n)
    want_a, want_d = _ww_loop(x)
    for elements in (ht.SCAN_ELEMENTS, 7 * n):
        monkeypatch.setattr(ht, "SCAN_ELEMENTS", elements)
        got_a, got_d = ht._fit_standard(x)
        np.testing.assert_allclose(got_a, want_a, rtol=1e-10)
        np.testing.assert_allclose(got_d, want_d, rtol=0, atol=1e-12)
        assert np.argmin(got_d) == np.argmin(want_d)


@pytest.mark.parametrize("n", [33, 64, 768, 3000])
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_scan_picks_the_full_scans_xmin(n, seed):
    """power_law_fit computes D exactly only where its lower bound (every 16th point of the tail) does not rule
    the candidate out: the chosen xmin, alpha and D are the full scan's (and WW's loop's)."""
    x = _heavy_spectrum(n, seed, power=8 if seed else 1)
    full_a, full_d = ht._fit_standard(x)
    best_a, best_d = ht._fit_standard(x, best_only=True)
    i = int(np.argmin(full_d))
    assert int(np.argmin(best_d)) == i and best_d[i] == full_d[i] and best_a[i] == full_a[i]
    assert np.all(best_d[np.isfinite(best_d)] == full_d[np.isfinite(best_d)])
    assert np.all(full_d[~np.isfinite(best_d)] > full_d[i])  # every skipped candidate is worse
