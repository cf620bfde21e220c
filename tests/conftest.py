"""Shared test set-up: keep measured SVD route choices out of the user's home directory."""

import pytest


@pytest.fixture(autouse=True)
def _route_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPECDYN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "specdyn-cache"))
