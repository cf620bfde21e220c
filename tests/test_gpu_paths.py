"""The GPU code paths run on the CPU (device="cpu" through the same functions): batching same-shape matrices
into one float64 Gram eigh, the pipeline that uploads batch b+1 before computing b, the float64 fallback, and
analyze's per-checkpoint batching; each against float64 numpy gesdd or the serial CPU path."""

import numpy as np
import pytest
import torch

import specdyn.analyze.compute as compute
from specdyn.analyze import AnalyzeOptions
from specdyn.io import CheckpointReader, discover
from specdyn.spectral.gpu import BatchedGram, working_set
from specdyn.spectral.matrices import select_matrices
from specdyn.spectral.pairs import find_pairs
from specdyn.spectral.rows import RowComputer
from specdyn.spectral.svd import SVDEngine
from tests.series import write_series
from tests.test_svd import matrix

TOP = 6


def check_against_gesdd(W, sp, top=TOP):
    U64, s64, Vh64 = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    assert np.max(np.abs(sp.s - s64)) <= 1e-6 * s64[0]
    # top-k subspaces: the principal angles' cosines are 1 to 1e-6
    for X, Y in ((sp.U, U64[:, :top]), (sp.V, Vh64[:top].T)):
        cos = np.linalg.svd(X.T.astype(np.float64) @ Y, compute_uv=False)
        assert 1 - cos.min() <= 1e-6


def test_batches_group_by_shape_and_respect_the_memory_bound():
    shapes = [(40, 20), (20, 40), (40, 20), (40, 20), (30, 30)]
    mats = [np.zeros(s, np.float32) for s in shapes]
    g = BatchedGram(TOP, "cpu", max_bytes=2 * working_set((40, 20)))
    assert g.batch_size((40, 20)) == 2
    assert g.batches(mats) == [[0, 2], [3], [1], [4]]


@pytest.mark.parametrize("max_bytes", [None, 1])  # everything in one batch per shape, or one matrix a batch
def test_batched_spectra_match_float64_gesdd(max_bytes):
    mats = [matrix(50, 20, seed=i) for i in range(3)] + [matrix(20, 70, seed=9), matrix(33, 33, seed=4)]
    mats.append(matrix(60, 25, "decaying"))  # s_r / s_1 < 1e-3: redone by the float64 SVD
    spectra = BatchedGram(TOP, "cpu", max_bytes=max_bytes)(mats)
    for W, sp in zip(mats, spectra):
        assert sp.U.shape == (W.shape[0], TOP) and sp.V.shape == (W.shape[1], TOP)
        assert sp.U.dtype == np.float32 and sp.s.dtype == np.float64
        check_against_gesdd(W, sp)


def test_batched_signs_and_values_agree_with_the_cpu_gram_route():
    mats = [matrix(48, 16, seed=i) for i in range(4)]
    engine = SVDEngine(top=TOP, route="gram", cache=False)
    for W, sp in zip(mats, BatchedGram(TOP, "cpu")(mats)):
        ref = engine(W)
        np.testing.assert_allclose(sp.s, ref.s, rtol=0, atol=1e-12 * ref.s[0])
        np.testing.assert_allclose(sp.U, ref.U, atol=1e-5)
        np.testing.assert_allclose(sp.V, ref.V, atol=1e-5)


def test_pipeline_uploads_the_next_batch_before_computing_the_current(monkeypatch):
    g = BatchedGram(TOP, "cpu")
    events = []
    up, comp = g.upload, g.compute
    monkeypatch.setattr(g, "upload", lambda ms: (events.append(("up", len(ms))), up(ms))[1])
    monkeypatch.setattr(g, "compute", lambda *a: (events.append(("compute", a[0].shape[0])), comp(*a))[1])
    batches = [[matrix(20, 10, seed=i)] * n for i, n in enumerate((1, 2, 3))]
    out = list(g.run(iter(batches)))
    assert [len(o) for o in out] == [1, 2, 3]
    assert events == [("up", 1), ("up", 2), ("compute", 1), ("up", 3), ("compute", 2), ("compute", 3)]


def test_device_rows_equal_the_serial_cpu_rows(tmp_path):
    """analyze's --device cuda loop (batches per checkpoint, read ahead, NaN matrices outside the batch), run
    with a CPU batcher, gives the rows the serial CPU path gives."""

    def nan_in_fc(step, sd):
        if step == 20:
            sd["fc.weight"][0, 0] = float("nan")

    write_series(tmp_path / "run", mutate=nan_in_fc)
    ckpts = discover(tmp_path / "run")
    with CheckpointReader(ckpts[0]) as rd:
        specs = select_matrices({n: rd.shape(n) for n in rd.names()})
    pairs = find_pairs(specs, 4)
    assert pairs  # alignment is assembled from batched spectra too
    todo = [(i, {"ckpt": c}) for i, c in enumerate(ckpts)]
    opts = AnalyzeOptions(topk=TOP)
    batched = RowComputer(specs, pairs, TOP, 4, SVDEngine(top=TOP, device="cpu", route="gram", cache=False))
    serial = RowComputer(specs, pairs, TOP, 4, SVDEngine(top=TOP, route="gram", cache=False))
    rows = list(compute._device_rows(todo, specs, batched, opts, None))
    assert [i for i, _, _ in rows] == list(range(len(ckpts)))
    for (_, _, row), ckpt in zip(rows, ckpts):
        ref = serial(compute._matrices(ckpt, specs, False))
        assert row.nonfinite == ref.nonfinite
        for name in row.metrics:
            np.testing.assert_allclose(row.metrics[name], ref.metrics[name], rtol=1e-9, err_msg=name)
        for a, b in zip(row.spectra, ref.spectra):
            np.testing.assert_allclose(a.s, b.s, rtol=0, atol=1e-10 * np.nanmax(np.r_[b.s, 1.0]))
            np.testing.assert_allclose(a.U, b.U, atol=1e-4)
        np.testing.assert_allclose(row.alignment, ref.alignment, atol=1e-5)
    assert rows[2][2].nonfinite == ["fc.weight"]


def test_cuda_needs_a_device():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench_gpu.py covers it")
    from specdyn.errors import SpecdynError

    with pytest.raises(SpecdynError, match="no CUDA device"):
        AnalyzeOptions(device="cuda")
