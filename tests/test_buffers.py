"""The read-buffer pool (specdyn.io.buffers): a buffer is read into again only once no array or view of it is
alive, and the pool keeps no more than its limit."""

import numpy as np

from specdyn.io import buffers
from specdyn.io.buffers import BufferPool

MB = 1 << 20


def test_idle_buffer_is_reused_and_live_ones_never_are():
    pool = BufferPool(16 * MB)
    a = pool.take(2 * MB)
    a[:] = 1
    matrix = a.view(np.float32).reshape(512, -1).T  # a view of a view, as analyze holds it
    del a
    b = pool.take(2 * MB)  # the first buffer is still alive through `matrix`: a new one
    assert not np.shares_memory(b, matrix)
    b[:] = 2
    assert np.all(matrix.T.view(np.uint8) == 1)  # untouched by the write into b
    del matrix
    c = pool.take(int(1.5 * MB))  # now idle: reused
    assert np.shares_memory(c, pool.buffers[0])
    assert len(pool.buffers) == 2


def test_reuse_is_for_similar_sizes_only():
    pool = BufferPool(64 * MB)
    del_me = pool.take(8 * MB)
    del del_me
    small = pool.take(2 * MB)  # an idle 8 MB buffer would hold a 2 MB read: a buffer of its own instead
    assert not np.shares_memory(small, pool.buffers[0])


def test_limit_frees_idle_buffers_and_then_hands_out_untracked_ones():
    pool = BufferPool(10 * MB)
    x = pool.take(4 * MB)
    y = pool.take(4 * MB)
    del x
    z = pool.take(5 * MB)  # 8 + 5 > 10: the idle 4 MB buffer is freed to make room
    assert pool.held() <= 10 * MB and any(np.shares_memory(z, b) for b in pool.buffers)
    w = pool.take(6 * MB)  # nothing idle left to free: a fresh, untracked buffer
    assert w.nbytes == 6 * MB and not any(np.shares_memory(w, b) for b in pool.buffers)
    assert pool.held() <= 10 * MB
    del y


def test_small_reads_are_not_pooled():
    pool = BufferPool()
    pool.take(buffers.MIN_POOLED - 1)
    assert pool.buffers == []


def test_analyze_leaves_no_buffers_behind(tmp_path):
    from specdyn.analyze import AnalyzeOptions, analyze
    from tests.series import write_series

    write_series(tmp_path / "run", steps=(0, 10))
    analyze([tmp_path / "run"], tmp_path / "s.zarr", AnalyzeOptions(), show_progress=False)
    assert buffers.POOL.buffers == []
