"""Shared test set-up: keep measured SVD route choices out of the user's home directory; `one_thread` for
modules that train tiny models."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _route_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPECDYN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "specdyn-cache"))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
