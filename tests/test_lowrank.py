"""Low-rank pruning maths (docs/method.md 1.9) against direct numpy SVDs."""

import numpy as np
import pytest
import torch

from specdyn.evals.lowrank import keep_rank, split_top_bottom, top_part, unflatten
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.svd import SVDEngine

pytestmark = pytest.mark.usefixtures("one_thread")


def _svd(W):
    U, s, Vh = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    return U, s, Vh.T


def _rank(M, tol=1e-4):
    s = np.linalg.svd(M.astype(np.float64), compute_uv=False)
    return int((s > tol * max(s[0], 1e-30)).sum())


def test_keep_rank_is_the_papers_ceiling():
    assert keep_rank(27, 0.5) == 14  # docs/method.md 9: 14 top kept, 13 bottom
    assert keep_rank(128, 0.5) == 64
    assert keep_rank(30, 0.1) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert keep_rank(10, 0.25) == 3
    assert keep_rank(7, 1.0) == 7 and keep_rank(7, 0.0) == 0
    assert keep_rank(1, 0.5) == 1
    with pytest.raises(ValueError):
        keep_rank(10, 1.5)


@pytest.mark.parametrize("shape", [(9, 27), (27, 9), (16, 16)])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_split_keeps_exactly_the_top_and_the_rest(shape, fraction):
    rng = np.random.default_rng(0)
    W = rng.standard_normal(shape).astype(np.float32)
    U, s, V = _svd(W)
    k = min(shape)
    r = keep_rank(k, fraction)
    top, bottom = split_top_bottom(W, U[:, :r], s, V[:, :r], r)
    # independent reconstructions from the full SVD
    np.testing.assert_allclose(top, (U[:, :r] * s[:r]) @ V[:, :r].T, atol=1e-5)
    np.testing.assert_allclose(bottom, (U[:, r:] * s[r:]) @ V[:, r:].T, atol=1e-5)
    np.testing.assert_allclose(top + bottom, W, atol=1e-5)
    assert _rank(top) == r
    assert _rank(bottom) == k - r
    # the kept directions keep their singular values
    np.testing.assert_allclose(np.linalg.svd(top, compute_uv=False)[:r], s[:r], rtol=1e-4)
    np.testing.assert_allclose(np.linalg.svd(bottom, compute_uv=False)[: k - r], s[r:], rtol=1e-3, atol=1e-5)


def test_keeping_everything_or_nothing_is_exact():
    W = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    U, s, V = _svd(W)
    top, bottom = split_top_bottom(W, U, s, V, 5)
    assert np.array_equal(top, W) and not bottom.any()
    top, bottom = split_top_bottom(W, U[:, :0], s, V[:, :0], 0)
    assert np.array_equal(bottom, W) and not top.any()


def test_split_with_the_engines_top_vectors_and_too_few_vectors():
    W = np.random.default_rng(2).standard_normal((40, 12)).astype(np.float32)
    sp = SVDEngine(top=4)(W)
    top, bottom = split_top_bottom(W, sp.U, sp.s, sp.V, 4)
    U, s, V = _svd(W)
    np.testing.assert_allclose(top, (U[:, :4] * s[:4]) @ V[:, :4].T, atol=1e-4)
    with pytest.raises(ValueError, match="top 6"):
        split_top_bottom(W, sp.U, sp.s, sp.V, 6)


@pytest.mark.parametrize(
    "name,shape,kind",
    [("fc.weight", (6, 4), "linear"), ("conv.weight", (8, 3, 3, 3), "conv"), ("tconv1.weight", (5, 7, 2, 2), "tconv")],
)
def test_unflatten_inverts_flatten(name, shape, kind):
    spec = MatrixSpec(name, shape, kind)
    t = torch.randn(shape)
    back = unflatten(spec, spec.flatten(t))
    assert back.shape == t.shape
    assert torch.equal(back, t)


def test_tconv_pruning_acts_on_the_transposed_matrix():
    """docs/method.md 0: a (c_in, c_out, kh, kw) transposed conv is pruned as c_out x (c_in kh kw), then transposed back."""
    spec = MatrixSpec("tconv1.weight", (5, 7, 2, 2), "tconv")
    t = torch.randn(spec.original_shape)
    M = t.transpose(0, 1).reshape(7, 20).numpy()
    U, s, V = _svd(M)
    top, _ = split_top_bottom(M, U[:, :4], s, V[:, :4], 4)
    pruned = unflatten(spec, top)
    expected = (
        torch.from_numpy(((U[:, :4] * s[:4]) @ V[:, :4].T).astype(np.float32)).reshape(7, 5, 2, 2).transpose(0, 1)
    )
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=0)


def test_top_part_uses_float64():
    U = np.eye(3, 2, dtype=np.float32)
    V = np.eye(4, 2, dtype=np.float32)
    out = top_part(U, np.array([2.0, 1.0]), V, 2)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
