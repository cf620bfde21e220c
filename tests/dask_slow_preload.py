"""Preloaded by the Dask workers of tests/test_scale.py: each matrix's SVD takes at least 0.2 s, so a worker can
be killed while it holds tasks (the maths is unchanged)."""

import time

import specdyn.spectral.svd as svd

_call = svd.SVDEngine.__call__


def _slow_call(self, W):
    time.sleep(0.2)
    return _call(self, W)


svd.SVDEngine.__call__ = _slow_call
