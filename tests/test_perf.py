"""Issue 19: the values-only mode (`--topk 0`) against independent SVDs and a full store, and `specdyn info`'s
report of the SVD routes and the route cache's age."""

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.cli import app
from specdyn.spectral import svd
from specdyn.spectral.heavy_tail import HEAVY_TAIL_METRICS
from specdyn.spectral.metrics import SPECTRUM_METRICS
from tests.series import write_series

runner = CliRunner()


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (30, 30), (9000, 3)])
def test_values_only_route_matches_float64_gesdd(shape, monkeypatch):
    monkeypatch.setattr(svd, "GRAM_BLOCK_ELEMENTS", 3000)  # the tall case in several Gram blocks
    W = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sp = svd.SVDEngine(top=0, cache=False)(W)
    s64 = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    assert np.max(np.abs(sp.s - s64)) <= 1e-6 * s64[0]
    assert sp.U.shape == (shape[0], 0) and sp.V.shape == (shape[1], 0)
    W[0, 0] = np.nan
    assert not svd.SVDEngine(top=0, cache=False)(W).finite


def test_values_only_store_holds_every_value_metric_and_no_vectors(tmp_path):
    run = tmp_path / "run"
    states = write_series(run, steps=(0, 10, 20))
    full, values = tmp_path / "full.zarr", tmp_path / "values.zarr"
    analyze([run], full, AnalyzeOptions(svd_route="gram"), show_progress=False)
    r = runner.invoke(app, ["analyze", str(run), "--out", str(values), "--topk", "0", "-q"])
    assert r.exit_code == 0, r.stderr
    a, b = specdyn.open_store(full), specdyn.open_store(values)
    assert b.top == 0 and b.pairs == [] and b.attrs["svd_routes"] == {"all": "values"}
    for name in a.matrices:
        W = states[20][name].reshape(states[20][name].shape[0], -1).double().numpy()
        s64 = np.linalg.svd(W, compute_uv=False)
        np.testing.assert_allclose(b.sv(name)[-1], s64, rtol=0, atol=1e-6 * s64[0])
        assert b.U(name).shape[-1] == 0 and b.V(name).shape[-1] == 0
    for metric in (*SPECTRUM_METRICS, *HEAVY_TAIL_METRICS):
        np.testing.assert_allclose(b.metric(metric), a.metric(metric), rtol=1e-5, err_msg=metric)
    assert b.root["stability"].shape[-1] == 0 and b.root["alignment"].shape[1:] == (0, 0)
    # a rerun with nothing new is fine; asking for vectors now is a one-line refusal
    assert runner.invoke(app, ["analyze", str(run), "--out", str(values), "--topk", "0", "-q"]).exit_code == 0
    r = runner.invoke(app, ["analyze", str(run), "--out", str(values), "-q"])
    assert r.exit_code != 0 and r.stderr.startswith("error:") and "topk" in r.stderr


def test_info_shows_the_routes_used_and_the_route_cache_age(tmp_path):
    run = tmp_path / "run"
    write_series(run, steps=(0, 10))
    assert runner.invoke(app, ["analyze", str(run), "-q"]).exit_code == 0
    # this series' matrices are thin (k <= 16: the Gram route, never timed); a measured route for one of its shapes
    table = {svd.cache_key((20, 8), "cpu", 64): svd.cache_entry("gram", {"gram": 1e-4}, measured=time.time() - 7200)}
    svd.route_cache_path().parent.mkdir(parents=True, exist_ok=True)
    svd.route_cache_path().write_text(json.dumps(table))
    doc = json.loads(runner.invoke(app, ["info", str(run), "--json"]).stdout)
    used, cache = doc["svd_routes"], doc["svd_route_cache"]
    assert used["20x8"] == "gram" and set(cache["routes"]) == {"20x8"}
    assert cache["routes"]["20x8"]["route"] == "gram" and 7190 <= cache["routes"]["20x8"]["age_s"] < 7800
    text = runner.invoke(app, ["info", str(run)]).stdout
    assert "SVD routes used:" in text and "20x8 gram" in text and "measured 2 h ago" in text
