"""lottery: masks and their singular vector agreement against an independent numpy computation."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import specdyn
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.evals.lottery import LotteryOptions, load_results, lottery
from tests.eval_tasks import analyzed, mlp_task, write_series

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (0, 10, 20)


def numpy_mask(state, names, density):
    """docs/method.md get_masks: pool |w| over the masked tensors, thr = sorted[-int(d N)], keep |w| > thr."""
    pooled = np.sort(np.concatenate([np.abs(state[n].numpy()).ravel() for n in names]))
    thr = pooled[-int(density * len(pooled))]
    return {n: np.abs(state[n].numpy()) > thr for n in names}


def numpy_sva(W, M, rank):
    U1, _, V1 = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    U2, _, V2 = np.linalg.svd((W * M).astype(np.float64), full_matrices=False)
    r = min(rank, U1.shape[1])
    return np.abs((U1[:, :r].T @ U2[:, :r]) * (V1[:r] @ V2[:r].T))


@pytest.fixture
def dense(tmp_path):
    states = write_series(tmp_path / "dense", mlp_task, STEPS)
    return states, analyzed(tmp_path / "dense")


def test_magnitude_mask_and_its_agreement_with_the_svd(dense):
    states, store = dense
    s = lottery(store, LotteryOptions(densities=[0.2, 0.5], sva_rank=8), show_progress=False)
    assert s["step"] == 20 and s["matrices"] == ["fc1.weight", "fc2.weight"]  # the final layer is not masked
    r = load_results(store)
    names = ["fc1.weight", "fc2.weight"]
    n_total = sum(states[20][n].numel() for n in names)
    for i, d in enumerate([0.2, 0.5]):
        masks = numpy_mask(states[20], names, d)
        assert r["kept"][i, 0] == int(d * n_total) - 1 == sum(int(m.sum()) for m in masks.values())
        for j, n in enumerate(names):
            assert r["layer_density"][i, 0, j] == pytest.approx(masks[n].mean())
            want = numpy_sva(states[20][n].numpy(), masks[n], 8)
            k = want.shape[0]
            np.testing.assert_allclose(r["sva"][i, 0, j, :k, :k], want, atol=1e-4)
            assert np.isnan(r["sva"][i, 0, j, k:]).all()
            assert r["sva_score"][i, 0, j] == pytest.approx(np.diag(want)[:10].mean(), abs=1e-4)
        # the random baseline has each layer's density (in expectation) and its own SVA
        np.testing.assert_allclose(r["layer_density"][i, 1], r["layer_density"][i, 0], atol=0.2)
        assert np.all((r["sva_score"][i, 1] >= 0) & (r["sva_score"][i, 1] <= 1 + 1e-6))
    again = lottery(store, LotteryOptions(densities=[0.2, 0.5], sva_rank=8), show_progress=False)
    assert again["densities"] == s["densities"]  # the random mask is seeded


def test_masks_from_an_earlier_step_and_bad_options(dense):
    states, store = dense
    lottery(store, LotteryOptions(densities=[0.3], step=10, sva_rank=4), show_progress=False)
    r = load_results(store)
    masks = numpy_mask(states[10], ["fc1.weight", "fc2.weight"], 0.3)
    assert r["attrs"]["step"] == 10 and r["kept"][0, 0] == sum(int(m.sum()) for m in masks.values())
    with pytest.raises(SpecdynError, match="no analyzed checkpoint at step 15"):
        lottery(store, LotteryOptions(step=15), show_progress=False)
    with pytest.raises(SpecdynError, match="must be in"):
        lottery(store, LotteryOptions(densities=[0.0]), show_progress=False)


def test_masked_runs_against_the_dense_run_over_time(dense, tmp_path):
    states, store = dense
    same = tmp_path / "same"
    shutil.copytree(tmp_path / "dense", same, ignore=shutil.ignore_patterns("*.zarr"))
    (same / "run.json").write_text(json.dumps({"mask": {"density": 0.2, "type": "magnitude"}}))
    shifted = tmp_path / "shifted"
    write_series(shifted, mlp_task, (5, 15, 25), seed=7)
    with pytest.raises(SpecdynError, match="none of its steps"):
        lottery(store, LotteryOptions(masked=[shifted]), show_progress=False)
    s = lottery(store, LotteryOptions(densities=[0.2], masked=[same, shifted], zip="index"), show_progress=False)
    assert [r["name"] for r in s["runs"]] == ["same", "shifted"]
    assert s["runs"][0]["mask"] == {"density": 0.2, "type": "magnitude"}
    np.testing.assert_allclose(s["runs"][0]["mean_sva_score"], 1.0, atol=1e-5)  # identical weights
    assert all(v < 0.9 for v in s["runs"][1]["mean_sva_score"])

    import xarray as xr

    tree = xr.open_datatree(str(store), engine="zarr")
    run = tree["evals/lottery/runs/same"].to_dataset()
    assert list(run["step"].values) == list(STEPS) and list(run["dense_step"].values) == list(STEPS)
    assert run["sva_diag"].shape == (3, 3, 10)  # 3 checkpoints, 3 matrices, the largest k
    shifted_run = tree["evals/lottery/runs/shifted"].to_dataset()
    assert list(shifted_run["step"].values) == [5, 15, 25] and list(shifted_run["dense_step"].values) == list(STEPS)


def test_cli(dense):
    _, store = dense
    res = CliRunner().invoke(app, ["lottery", str(store.parent), "--density", "0.1,0.2", "--json", "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert [d["density"] for d in s["densities"]] == [0.1, 0.2]
    res = CliRunner().invoke(app, ["lottery", str(store.parent), "--zip", "sideways"])
    assert res.exit_code == 2 and "--zip" in res.output
    # the figure: agreement against density, magnitude mask against the random-mask baseline
    from specdyn.plots import PLOTS
    from tests.figure_checks import check_figure

    r = load_results(store)
    fig = PLOTS["lottery"]([specdyn.open_store(store)])
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    for t, label in enumerate(("magnitude mask", "random mask (baseline)")):
        np.testing.assert_allclose(lines[label].get_xdata(), [0.1, 0.2])
        np.testing.assert_allclose(lines[label].get_ydata(), np.nanmean(r["sva_score"][:, t], axis=1))
    bars = [p.get_width() for p in fig.axes[1].patches]
    np.testing.assert_allclose(bars, np.concatenate([r["sva_score"][0, 0], r["sva_score"][0, 1]]))
    check_figure(fig)
    out = store.parent / "lottery.png"
    res = CliRunner().invoke(app, ["plot", "lottery", str(store.parent), "-o", str(out), "--dpi", "60"])
    assert res.exit_code == 0 and out.stat().st_size > 0, res.output
