"""interpolate against direct computations: lerped states evaluated by fresh models, numpy SVDs, the barrier."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import specdyn
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.evals.interpolate import (
    InterpOptions,
    Pair,
    alphas,
    barrier_by_split,
    branch_pairs,
    curve_barriers,
    interpolate,
    lerp_state,
    load_results,
    read_checkpoint_pairs,
)
from specdyn.spectral.metrics import barrier, effective_rank
from tests.eval_tasks import bn_task, conv_task, evaluate_state, mlp_task, spec, write_series

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lerp_state_endpoints_are_exact_and_integers_round():
    a = {"w": torch.randn(3, 4), "n": torch.tensor(10), "b": torch.tensor([True, False])}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(21), "b": torch.tensor([False, True])}
    assert lerp_state(a, b, 0.0)["w"] is a["w"] and lerp_state(a, b, 1.0)["w"] is b["w"]
    mid = lerp_state(a, b, 0.5)
    torch.testing.assert_close(mid["w"], (a["w"] + b["w"]) / 2)
    assert mid["n"].item() == 16 and mid["n"].dtype == torch.int64  # round(15.5) to even
    assert torch.equal(lerp_state(a, b, 0.3)["b"], a["b"]) and torch.equal(lerp_state(a, b, 0.7)["b"], b["b"])


def test_barrier_of_curves():
    grid = alphas(11)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and len(grid) == 11
    linear = 2.0 + 3.0 * grid
    assert barrier(linear) == pytest.approx(0.0, abs=1e-12)
    bump = linear + np.sin(np.pi * grid)  # peak excess 1 at alpha = 0.5
    assert barrier(bump) == pytest.approx(1.0)
    assert barrier(linear - np.sin(np.pi * grid)) == pytest.approx(
        -np.sin(np.pi * 0.1)
    )  # signed: the largest of the dips
    stacked = np.stack([linear, bump], axis=1)[:, None, :]  # (alpha, 1, 2)
    np.testing.assert_allclose(curve_barriers(stacked), [[0.0, 1.0]], atol=1e-12)
    with pytest.raises(SpecdynError):
        alphas(1)


def _numpy_svd(t, tconv=False):
    t = t.double()
    if tconv:
        t = t.transpose(0, 1)
    U, s, Vh = np.linalg.svd(t.reshape(t.shape[0], -1).numpy(), full_matrices=False)
    return U, s, Vh.T


@pytest.mark.parametrize("task,name", [(mlp_task, "mlp_task"), (conv_task, "conv_task")])
def test_interpolation_matches_a_direct_computation(tmp_path, task, name):
    states = write_series(tmp_path / "run", task, (0, 10))
    a, b = tmp_path / "run" / "step_0.safetensors", tmp_path / "run" / "step_10.safetensors"
    out = tmp_path / "lmc.zarr"
    s = interpolate([Pair(a, b)], out, InterpOptions(points=5, task=spec(name), bn_recal=False), show_progress=False)
    assert s["pairs"] == 1 and s["computed"] == 1
    r = load_results(out)
    grid = r["alpha"]
    np.testing.assert_allclose(grid, [0, 0.25, 0.5, 0.75, 1])
    metrics = [str(m) for m in r["metric"]]
    matrices = [n for n, p in task.build_model().named_parameters() if p.ndim >= 2]
    assert list(r["interp_matrix"]) == matrices
    tconv = {"up.weight"}
    for i, alpha in enumerate(grid):
        state = {k: (1 - alpha) * states[0][k] + alpha * states[10][k] for k in states[0]}
        want = evaluate_state(task, states[0] if alpha == 0 else states[10] if alpha == 1 else state)
        for si, split in enumerate(("train", "val")):
            for mi, m in enumerate(metrics):
                assert r["full"][0, i, si, mi] == pytest.approx(want[split][m], rel=1e-5, abs=1e-7)
        for j, n in enumerate(matrices):
            _, sv, _ = _numpy_svd(state[n], n in tconv)
            assert r["effective_rank"][0, i, j] == pytest.approx(effective_rank(sv), rel=1e-5)
    # the endpoints are the checkpoints themselves
    want_a = evaluate_state(task, states[0])
    assert r["full"][0, 0, 0, 0] == want_a["train"]["loss"]
    # every curve's barrier is the barrier of the stored curve
    for c in ("full", "top_kept", "bottom_kept"):
        for si in range(2):
            for mi in range(len(metrics)):
                assert r[f"{c}_barrier"][0, si, mi] == pytest.approx(barrier(r[c][0, :, si, mi]))
    # endpoint SVA against numpy's SVD, sign-invariant
    for j, n in enumerate(matrices):
        Ua, _, Va = _numpy_svd(states[0][n], n in tconv)
        Ub, _, Vb = _numpy_svd(states[10][n], n in tconv)
        k = min(Ua.shape[1], 64)
        expected = np.abs((Ua[:, :k] * Ub[:, :k]).sum(0) * (Va[:, :k] * Vb[:, :k]).sum(0))
        np.testing.assert_allclose(r["endpoint_sva"][0, j, :k], expected, atol=2e-4)
        assert np.isnan(r["endpoint_sva"][0, j, k:]).all()
        assert r["endpoint_sva_score"][0, j] == pytest.approx(expected[:10].mean(), abs=2e-4)


def test_batchnorm_statistics_are_interpolated_and_reestimated(tmp_path):
    states = write_series(tmp_path / "run", bn_task, (0, 10))
    a, b = tmp_path / "run" / "step_0.safetensors", tmp_path / "run" / "step_10.safetensors"
    interpolate([Pair(a, b)], tmp_path / "o.zarr", InterpOptions(points=3, task=spec("bn_task")), show_progress=False)
    r = load_results(tmp_path / "o.zarr")
    mid = {
        k: (0.5 * states[0][k] + 0.5 * states[10][k]) if states[0][k].is_floating_point() else states[0][k]
        for k in states[0]
    }
    model = bn_task.build_model()
    model.load_state_dict(mid)
    torch.optim.swa_utils.update_bn(bn_task.batches("train"), model)
    assert r["full"][0, 1, 1, 0] == pytest.approx(bn_task.evaluate(model, "val")["loss"], rel=1e-5)


def test_pairs_file_branches_and_resume(tmp_path):
    trunk = tmp_path / "trunk"
    write_series(trunk, mlp_task, (0, 10))
    dirs = []
    for split in (0, 10):
        for seed in (3, 4, 5):
            d = tmp_path / f"branch-{split}-{seed}"
            write_series(d, mlp_task, (split, 30), seed=seed + split)
            (d / "run.json").write_text(
                json.dumps(
                    {
                        "task": "tiny",
                        "config": {"seed": seed},
                        "init_from": {"path": str(trunk / f"step_{split}.safetensors"), "step": split},
                    }
                )
            )
            dirs.append(d)
    pairs = branch_pairs(dirs)
    assert len(pairs) == 6 and [p.split_step for p in pairs] == [0, 0, 0, 10, 10, 10]
    assert all(p.a.name == p.b.name == "step_30.safetensors" for p in pairs)
    assert {(p.a.parent.name, p.b.parent.name) for p in pairs if p.split_step == 0} == {
        ("branch-0-3", "branch-0-4"),
        ("branch-0-3", "branch-0-5"),
        ("branch-0-4", "branch-0-5"),
    }
    with pytest.raises(SpecdynError, match="not a branch"):
        branch_pairs([trunk, dirs[0]])

    listing = tmp_path / "pairs.txt"
    listing.write_text(
        "# a comment\n"
        + "\n".join(
            f"{p.a.relative_to(tmp_path)} {p.b.relative_to(tmp_path)} {p.split_step} {p.label}" for p in pairs[:4]
        )
        + "\n"
    )
    from_file = read_checkpoint_pairs(listing)
    assert from_file == pairs[:4]

    out = tmp_path / "lmc.zarr"
    opts = InterpOptions(points=3, task=spec("mlp_task"))
    s = interpolate(from_file, out, opts, show_progress=False)
    assert s["computed"] == 4
    s = interpolate(pairs, out, opts, show_progress=False)  # two new pairs; the four done are kept
    assert s["computed"] == 2 and s["pairs"] == 6
    r = load_results(out)
    assert list(r["split_step"]) == [0, 0, 0, 10, 10, 10]
    groups = barrier_by_split(r)
    full = r["full_barrier"][:, 0, 0]
    assert groups[(0, "split 0")]["mean"] == pytest.approx(full[:3].mean())
    assert groups[(10, "split 10")]["std"] == pytest.approx(full[3:].std()) and groups[(10, "split 10")]["pairs"] == 3
    with pytest.raises(SpecdynError, match="another points"):
        interpolate(pairs, out, InterpOptions(points=5, task=spec("mlp_task")), show_progress=False)

    import xarray as xr

    ds = xr.open_datatree(str(out), engine="zarr")["evals/interp"].to_dataset()
    assert ds.sizes["interp_pair"] == 6 and "split_step" in ds.coords


def test_architecture_mismatch_fails_before_any_work(tmp_path):
    write_series(tmp_path / "a", mlp_task, (0,))
    write_series(tmp_path / "b", conv_task, (0,))
    out = tmp_path / "o.zarr"
    res = CliRunner().invoke(
        app,
        [
            "interpolate",
            str(tmp_path / "a" / "step_0.safetensors"),
            str(tmp_path / "b" / "step_0.safetensors"),
            "--task",
            spec("mlp_task"),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 1 and "different architectures" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["interpolate", str(tmp_path / "a" / "step_0.safetensors")])
    assert res.exit_code == 2 and "expected two checkpoints" in res.output


def test_cli_default_output_and_figure(tmp_path):
    from specdyn.plots.interp import plot
    from specdyn.store.reading import open_any

    write_series(tmp_path / "run", mlp_task, (0, 10, 20))
    runner = CliRunner()
    for start in (0, 10):
        res = runner.invoke(
            app,
            [
                "interpolate",
                str(tmp_path / "run" / f"step_{start}.safetensors"),
                str(tmp_path / "run" / "step_20.safetensors"),
                "--task",
                spec("mlp_task"),
                "--points",
                "4",
                "--json",
                "-q",
            ],
        )
        assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["store"] == str(tmp_path / "run" / "interp.zarr")  # no analyzed store: a standalone results zarr
    assert s["pairs"] == 2 and len(s["results"][1]["top_kept"]["val"]["loss"]) == 4
    st = open_any(tmp_path / "run", "interp.zarr")
    fig = plot([st])
    r = load_results(st.path)
    bars, paths = fig.axes[0], fig.axes[1]
    lines = [l for l in paths.lines]
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), r["full"][0, :, 0, 0])
    np.testing.assert_allclose(lines[0].get_xdata(), r["alpha"])
    assert len(bars.patches) == 6  # one split group per start (unknown split steps): 2 groups x 3 models
    from tests.figure_checks import check_figure

    check_figure(fig)  # the legend covers no bar (it hid "top kept" inside the panel)
    assert "top 0.5 of σ kept" in [t.get_text() for t in fig.legends[0].get_texts()]
    out = tmp_path / "interp.png"  # the plot command reads the standalone results zarr too
    res = runner.invoke(app, ["plot", "interp", str(tmp_path / "run"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SpecdynError, match="run `specdyn interpolate"):
        plot([specdyn.open_store(_analyzed_copy(tmp_path))])


def _analyzed_copy(tmp_path):
    from tests.eval_tasks import analyzed

    write_series(tmp_path / "other", mlp_task, (0, 10))
    return analyzed(tmp_path / "other")
