"""prune-eval against a direct computation on tiny models: full SVDs with torch, fresh models, no specdyn code."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import specdyn
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.evals import prune as prune_mod
from specdyn.evals.prune import PruneOptions, load_results, prune_eval
from tests.eval_tasks import analyzed, bn_task, conv_task, evaluate_state, mlp_task, spec, write_series

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (0, 10, 20)


def reference_state(task, state, fraction, part):
    """Every matrix but the last (registration order) replaced by its top ceil(f k) or its remaining directions,
    from torch's full SVD in float64; transposed convs (module type) are transposed first and back after."""
    model = task.build_model()
    tconv = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    names = [n for n, p in model.named_parameters() if p.ndim >= 2][:-1]
    out = {k: v.clone() for k, v in state.items()}
    for n in names:
        t = state[n].double()
        if n in tconv:
            t = t.transpose(0, 1)
        M = t.reshape(t.shape[0], -1)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        r = math.ceil(fraction * len(S))
        sl = slice(0, r) if part == "top" else slice(r, None)
        P = (U[:, sl] * S[sl]) @ Vh[sl]
        P = P.reshape(t.shape)
        out[n] = (P.transpose(0, 1) if n in tconv else P).float()
    return out


def recalibrated(task, state):
    model = task.build_model()
    model.load_state_dict(state)
    torch.optim.swa_utils.update_bn(task.batches("train"), model)
    return {split: task.evaluate(model, split) for split in ("train", "val")}


def _values(r, name, i, j=None):
    a = r[name][i] if j is None else r[name][i, j]
    return {split: dict(zip([str(m) for m in r["metric"]], a[si])) for si, split in enumerate(("train", "val"))}


def _close(got, want, rtol=1e-5):
    for split in want:
        for m in want[split]:
            assert got[split][m] == pytest.approx(want[split][m], rel=rtol, abs=1e-7), (split, m)


@pytest.mark.parametrize("task,name", [(mlp_task, "mlp_task"), (conv_task, "conv_task")])
def test_pruning_matches_a_direct_computation(tmp_path, task, name):
    states = write_series(tmp_path / "run", task, STEPS)
    store = analyzed(tmp_path / "run")
    s = prune_eval(store, PruneOptions(keep=[0.5, 1.0], task=spec(name), bn_recal=False), show_progress=False)
    assert s["computed"] == 3
    r = load_results(store)
    assert list(r["step"]) == list(STEPS)
    matrices = [n for n, p in task.build_model().named_parameters() if p.ndim >= 2]
    assert list(r["prune_matrix"]) == matrices[:-1]  # the final layer is never pruned
    assert r["attrs"]["final_layer"] == matrices[-1]
    j_half, j_one = list(r["keep"]).index(0.5), list(r["keep"]).index(1.0)
    for i, step in enumerate(STEPS):
        full = evaluate_state(task, states[step])
        _close(_values(r, "full", i), full, rtol=1e-6)
        _close(_values(r, "top_kept", i, j_half), evaluate_state(task, reference_state(task, states[step], 0.5, "top")))
        _close(
            _values(r, "bottom_kept", i, j_half),
            evaluate_state(task, reference_state(task, states[step], 0.5, "bottom")),
        )
        # keeping every direction is the full model, bit for bit
        assert np.array_equal(r["top_kept"][i, j_one], r["full"][i])
        _close(
            _values(r, "bottom_kept", i, j_one),
            evaluate_state(task, reference_state(task, states[step], 1.0, "bottom")),
        )
    shapes = {n: tuple(p.shape) for n, p in task.build_model().named_parameters()}
    shapes["up.weight"] = (3, 5, 3, 3)  # a transposed conv is (c_in, c_out, kh, kw): c_out rows
    for f_idx, f in enumerate(r["keep"]):
        for m, kept in zip(r["prune_matrix"], r["kept_rank"][f_idx]):
            k = min(shapes[m][0], math.prod(shapes[m][1:]))
            assert kept == math.ceil(f * k)
    if name == "conv_task":
        # `up` is a transposed conv the store (going by its name) flattened the other way: SVD from the checkpoint
        assert r["svd_from_store"][:, list(r["prune_matrix"]).index("up.weight")].sum() == 0
        assert r["svd_from_store"][:, list(r["prune_matrix"]).index("conv.weight")].all()
    else:
        assert r["svd_from_store"].all() and s["svd"] == {"store": 6, "checkpoint": 0}


def test_batchnorm_is_recalibrated_after_pruning(tmp_path):
    states = write_series(tmp_path / "run", bn_task, STEPS)
    store = analyzed(tmp_path / "run")
    prune_eval(store, PruneOptions(keep=[0.5, 1.0], task=spec("bn_task")), show_progress=False)
    r = load_results(store)
    j_half, j_one = list(r["keep"]).index(0.5), list(r["keep"]).index(1.0)
    for i, step in enumerate(STEPS):
        _close(
            _values(r, "full", i), evaluate_state(bn_task, states[step]), rtol=1e-6
        )  # the full model is not recalibrated
        _close(_values(r, "top_kept", i, j_one), recalibrated(bn_task, states[step]))
        _close(
            _values(r, "top_kept", i, j_half), recalibrated(bn_task, reference_state(bn_task, states[step], 0.5, "top"))
        )
        _close(
            _values(r, "bottom_kept", i, j_half),
            recalibrated(bn_task, reference_state(bn_task, states[step], 0.5, "bottom")),
        )
    assert r["attrs"]["bn_recal"] is True
    with pytest.raises(SpecdynError, match="another BatchNorm recalibration"):
        prune_eval(store, PruneOptions(keep=[0.5], task=spec("bn_task"), bn_recal=False), show_progress=False)
    prune_eval(
        store, PruneOptions(keep=[1.0], task=spec("bn_task"), bn_recal=False, overwrite=True), show_progress=False
    )
    r = load_results(store)
    assert list(r["keep"]) == [1.0] and np.array_equal(r["top_kept"][:, 0], r["full"])


def test_too_few_stored_vectors_fall_back_to_one_svd_of_the_checkpoint(tmp_path):
    write_series(tmp_path / "a", mlp_task, STEPS)
    write_series(tmp_path / "b", mlp_task, STEPS)
    big, small = analyzed(tmp_path / "a", top=64), analyzed(tmp_path / "b", top=2)
    prune_eval(big, PruneOptions(task=spec("mlp_task")), show_progress=False)
    s = prune_eval(small, PruneOptions(task=spec("mlp_task")), show_progress=False)
    # fc1 (12x6) keeps 3 > 2 stored vectors, fc2 (10x12) keeps 5: both from the checkpoint
    assert s["svd"] == {"store": 0, "checkpoint": 6}
    a, b = load_results(big), load_results(small)
    for name in ("full", "top_kept", "bottom_kept"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5)


def test_one_model_instance_serves_every_checkpoint(tmp_path, monkeypatch):
    import tests.eval_tasks as tasks

    write_series(tmp_path / "run", mlp_task, STEPS)
    store = analyzed(tmp_path / "run")
    calls = []
    original = tasks.TinyTask.build_model
    monkeypatch.setattr(tasks.TinyTask, "build_model", lambda self: calls.append(1) or original(self))
    prune_eval(store, PruneOptions(keep=[0.25, 0.5], task="tests.eval_tasks:mlp_task"), show_progress=False)
    assert len(calls) == 1


def _analyze_arrays(store):
    import zarr

    root = zarr.open_group(str(store), mode="r")
    out = {name: arr[...] for name, arr in root.arrays()}
    for m in root["matrix"][:]:
        for what in ("sv", "U", "V"):
            out[f"{m}/{what}"] = root[f"matrices/{m}/{what}"][...]
    return out


def test_interrupted_run_resumes_and_never_touches_the_analysis(tmp_path, monkeypatch):
    write_series(tmp_path / "run", mlp_task, (0, 10, 20, 30))
    store = analyzed(tmp_path / "run")
    before = _analyze_arrays(store)
    calls = {"n": 0}
    real = prune_mod.run_variant

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # in the third checkpoint (3 variants each)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prune_mod, "run_variant", dying)
    with pytest.raises(KeyboardInterrupt):
        prune_eval(store, PruneOptions(task=spec("mlp_task")), show_progress=False)
    partial = load_results(store)
    assert list(partial["step"]) == [0, 10]  # rows with done flags only
    monkeypatch.setattr(prune_mod, "run_variant", real)
    s = prune_eval(store, PruneOptions(task=spec("mlp_task")), show_progress=False)
    assert s["computed"] == 2
    after = _analyze_arrays(store)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)

    # a clean run elsewhere gives the same numbers
    write_series(tmp_path / "clean", mlp_task, (0, 10, 20, 30))
    clean_store = analyzed(tmp_path / "clean")
    prune_eval(clean_store, PruneOptions(task=spec("mlp_task")), show_progress=False)
    a, b = load_results(store), load_results(clean_store)
    for name in ("full", "top_kept", "bottom_kept"):
        np.testing.assert_array_equal(a[name], b[name])

    # a sweep adds fractions without recomputing the ones done; the kept fraction's numbers stay put
    s = prune_eval(store, PruneOptions(keep=[0.25, 0.5], task=spec("mlp_task")), show_progress=False)
    assert s["computed"] == 4
    c = load_results(store)
    assert list(c["keep"]) == [0.25, 0.5] and c["done"].all()
    np.testing.assert_array_equal(c["top_kept"][:, 1], a["top_kept"][:, 0])
    s = prune_eval(store, PruneOptions(keep=[0.5], task=spec("mlp_task")), show_progress=False)
    assert s["computed"] == 0

    import xarray as xr

    tree = xr.open_datatree(str(store), engine="zarr")
    ds = tree["evals/prune"].to_dataset()
    assert ds.sizes["prune_checkpoint"] == 4 and "step" in ds.coords
    np.testing.assert_array_equal(ds["top_kept"].values, c["top_kept"])


def test_selection_and_a_growing_series(tmp_path):
    write_series(tmp_path / "run", mlp_task, (0, 10, 20, 30, 40))
    store = analyzed(tmp_path / "run")
    s = prune_eval(store, PruneOptions(task=spec("mlp_task"), steps="10:30", every=2), show_progress=False)
    assert s["steps"] == [10, 30]
    s = prune_eval(store, PruneOptions(task=spec("mlp_task")), show_progress=False)
    assert s["steps"] == [0, 10, 20, 30, 40] and s["computed"] == 3


def test_cli_json_and_user_errors(tmp_path):
    write_series(tmp_path / "run", mlp_task, STEPS)
    store = analyzed(tmp_path / "run")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "prune-eval",
            str(tmp_path / "run"),
            "--task",
            spec("mlp_task"),
            "--keep",
            "0.25,0.5",
            "--no-bn-recal",
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["keep"] == [0.25, 0.5] and s["steps"] == list(STEPS) and s["store"] == str(store)
    assert set(s["top_kept"]) == {"0.25", "0.5"} and len(s["full"]["val"]["err"]) == 3
    # a task whose model does not fit: one line, before any work, nothing written
    write_series(tmp_path / "other", mlp_task, STEPS)
    other = analyzed(tmp_path / "other")
    res = runner.invoke(app, ["prune-eval", str(other), "--task", spec("conv_task")])
    assert res.exit_code == 1
    assert "does not match the checkpoint" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (other / "evals").exists()
    res = runner.invoke(app, ["prune-eval", str(other), "--task", spec("mlp_task"), "--keep", "1.5"])
    assert res.exit_code == 2 and "must be in (0, 1]" in res.output
    res = runner.invoke(app, ["prune-eval", str(other), "--task", "nosuch.py:task"])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = runner.invoke(app, ["prune-eval", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "no specdyn store" in res.output


def test_prune_figure_draws_the_stored_values(tmp_path):
    from specdyn.plots.prune import plot

    write_series(tmp_path / "run", mlp_task, STEPS)
    store = analyzed(tmp_path / "run")
    with pytest.raises(SpecdynError, match="run `specdyn prune-eval"):
        plot([specdyn.open_store(store)])
    prune_eval(store, PruneOptions(keep=[0.25, 0.5, 0.75], task=spec("mlp_task")), show_progress=False)
    r = load_results(store)
    fig = plot([specdyn.open_store(store)])
    train, val, sweep = fig.axes[:3]
    lines = {line.get_label(): line for line in train.lines}
    np.testing.assert_allclose(lines["full model"].get_ydata(), r["full"][:, 0, 0])
    np.testing.assert_allclose(lines["top 0.5 of σ kept"].get_ydata(), r["top_kept"][:, 1, 0, 0])
    np.testing.assert_allclose(lines["bottom 0.5 of σ kept"].get_ydata(), r["bottom_kept"][:, 1, 0, 0])
    np.testing.assert_allclose({l.get_label(): l for l in val.lines}["full model"].get_ydata(), r["full"][:, 1, 0])
    from tests.figure_checks import check_figure

    check_figure(fig)
    full, top_line = lines["full model"], lines["top 0.5 of σ kept"]  # the full model stays visible under top kept
    assert full.get_linewidth() > 2 * top_line.get_linewidth() and full.get_zorder() < top_line.get_zorder()
    top = {l.get_label(): l for l in sweep.lines}["top kept (train)"]
    assert len(top.get_xdata()) == 3
    np.testing.assert_allclose(sorted(top.get_ydata()), sorted(r["top_kept"][-1, :, 0, 0]))
    fig = plot([specdyn.open_store(store)], keep=0.25, metric="err")
    np.testing.assert_allclose(
        {l.get_label(): l for l in fig.axes[0].lines}["top 0.25 of σ kept"].get_ydata(), r["top_kept"][:, 0, 0, 1]
    )
    with pytest.raises(SpecdynError, match="no prune-eval results for --keep 0.6"):
        plot([specdyn.open_store(store)], keep=0.6)
    res = CliRunner().invoke(app, ["plot", "prune", str(store), "-o", str(tmp_path / "fig4.png"), "--metric", "err"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig4.png").stat().st_size > 0
