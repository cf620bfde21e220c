"""`specdyn analyze` end to end: the store against independent numpy SVDs, resume, growth, safety, the CLI."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.spectral.metrics import count90, effective_rank, stable_rank
from tests.series import Net, write_series

runner = CliRunner()


def flat(name, t):
    return t.reshape(t.shape[0], -1).double().numpy()


OPTS = dict(svd_route="gram")  # one pinned route: reruns must then be bit-identical


@pytest.fixture
def series(tmp_path):
    states = write_series(tmp_path / "run")
    return tmp_path / "run", states


def test_store_matches_independent_numpy(series):
    run, states = series
    summary = analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 5 and summary["matrices"] == 6
    st = specdyn.open_store(run / "specdyn.zarr")
    assert list(st.steps) == [0, 10, 20, 30, 40]
    names = [k for k, v in states[0].items() if v.ndim >= 2]
    assert st.matrices == names  # registration order
    for j, name in enumerate(names):
        svds = [np.linalg.svd(flat(name, states[s][name]), full_matrices=False) for s in st.steps]
        s_all = np.stack([s for _, s, _ in svds])
        np.testing.assert_allclose(st.sv(name), s_all, rtol=1e-6, atol=1e-6 * s_all.max())
        np.testing.assert_allclose(st.metric("effective_rank")[:, j], effective_rank(s_all), rtol=1e-6)
        np.testing.assert_allclose(st.metric("count90")[:, j], count90(s_all), rtol=1e-6)
        np.testing.assert_allclose(st.metric("stable_rank")[:, j], stable_rank(s_all), rtol=1e-6)
        np.testing.assert_allclose(st.metric("spectral_norm")[:, j], s_all[:, 0], rtol=1e-6)
        # stability: SVA diagonal against the final checkpoint, from numpy's own vectors
        Uf, _, Vhf = svds[-1]
        for t, (U, _, Vh) in enumerate(svds):
            r = min(10, U.shape[1])
            ref = np.abs(np.sum(U[:, :r] * Uf[:, :r], 0) * np.sum(Vh[:r] * Vhf[:r], 1))
            np.testing.assert_allclose(st.stability(name)[t, :r], ref, atol=2e-4)
            np.testing.assert_allclose(st.metric("stability_score")[t, j], ref.mean(), atol=2e-4)
        np.testing.assert_allclose(st.stability(name)[-1, : min(64, s_all.shape[1])], 1.0, atol=1e-5)
        assert np.isnan(st.metric("stability_prev_score")[0, j])
    kinds = {p["kind"] for p in st.root["pair"].attrs["pairs"]}
    assert kinds == {"embedding", "qk", "vo", "plain"}
    assert st.alignment_score().shape == (5, len(st.pairs))
    assert np.all((st.alignment_score() >= 0) & (st.alignment_score() <= 1 + 1e-6))


def test_store_opens_with_xarray_without_warnings(series):
    xr = pytest.importorskip("xarray")
    run, _ = series
    analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(run / "specdyn.zarr")
        tree = xr.open_datatree(run / "specdyn.zarr", engine="zarr")
    assert ds["effective_rank"].dims == ("checkpoint", "matrix")
    assert ds["stability"].dims == ("checkpoint", "matrix", "rank")
    assert tree["matrices/fc.weight"]["U"].dims == ("checkpoint", "m", "top")
    assert list(ds["matrix"].values) == specdyn.open_store(run / "specdyn.zarr").matrices


def snapshot(store) -> dict:
    st = specdyn.open_store(store)
    out = {"steps": st.steps, "ckpts": np.array(st.checkpoints)}
    for name in ("effective_rank", "stability_score", "subspace_overlap", "stability_prev_score"):
        out[name] = st.metric(name)
    out["stability"], out["alignment"] = st.stability(), st.alignment()
    for m in st.matrices:
        out[m + "/sv"], out[m + "/U"], out[m + "/V"] = st.sv(m), st.U(m), st.V(m)
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_crash_mid_row_then_rerun_equals_clean_run(series, tmp_path, monkeypatch):
    run, _ = series
    analyze([run], tmp_path / "clean.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    import specdyn.analyze.compute as mod

    calls = {"n": 0}
    real = mod.RowWriter.write

    def dying_write(self, i, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # die half-way through the third row: some arrays written, `done` not
            root = self.root
            root["effective_rank"][i] = np.zeros(root["effective_rank"].shape[1])
            root["matrices/fc.weight/sv"][i] = np.zeros(root["matrices/fc.weight/sv"].shape[1])
            raise KeyboardInterrupt
        return real(self, i, *args)

    monkeypatch.setattr(mod.RowWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        analyze([run], tmp_path / "resumed.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    monkeypatch.setattr(mod.RowWriter, "write", real)
    assert len(specdyn.open_store(tmp_path / "resumed.zarr")) == 2  # the half row is not visible
    summary = analyze([run], tmp_path / "resumed.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["computed"] == 3
    assert_same(snapshot(tmp_path / "clean.zarr"), snapshot(tmp_path / "resumed.zarr"))


def test_sigkill_then_rerun_equals_clean_run(tmp_path):
    run = tmp_path / "run"
    write_series(run, steps=range(0, 400, 10))
    analyze([run], tmp_path / "clean.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "specdyn", "analyze", str(run), "--out", str(store), "--svd-route", "gram", "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline, rows = time.time() + 60, 0
    while time.time() < deadline and not 0 < rows < 40:  # kill once some rows are done, mid-run
        try:
            rows = len(specdyn.open_store(store))
        except Exception:  # the store is still being created
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < rows < 40
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    assert_same(snapshot(tmp_path / "clean.zarr"), snapshot(store))


def test_growing_and_interleaved_series_equal_clean_run(series, tmp_path):
    run, _ = series
    analyze([run], tmp_path / "clean.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    grow = tmp_path / "grow"
    grow.mkdir()
    for step in (0, 20):
        shutil.copy(run / f"step_{step}.safetensors", grow)
    store = tmp_path / "grow.zarr"
    assert analyze([grow], store, AnalyzeOptions(**OPTS), show_progress=False)["computed"] == 2
    shutil.copy(run / "step_40.safetensors", grow)  # appended in place
    assert analyze([grow], store, AnalyzeOptions(**OPTS), show_progress=False)["computed"] == 1
    st = specdyn.open_store(store)
    np.testing.assert_allclose(st.stability(st.matrices[0])[-1, :5], 1.0, atol=1e-5)  # against the new final
    for step in (10, 30):  # between existing rows: rebuilt beside, then swapped in
        shutil.copy(run / f"step_{step}.safetensors", grow)
    assert analyze([grow], store, AnalyzeOptions(**OPTS), show_progress=False)["computed"] == 2
    assert not list(tmp_path.glob("*-tmp"))
    assert_same(snapshot(tmp_path / "clean.zarr"), snapshot(store))
    # nothing new: nothing computed, store unchanged
    again = analyze([grow], store, AnalyzeOptions(**OPTS), show_progress=False)
    assert again["computed"] == 0
    assert_same(snapshot(tmp_path / "clean.zarr"), snapshot(store))


def test_subsampling_and_union(series, tmp_path):
    run, _ = series
    store = tmp_path / "s.zarr"
    analyze([run], store, AnalyzeOptions(every=2, **OPTS), show_progress=False)
    assert list(specdyn.open_store(store).steps) == [0, 20, 40]
    analyze([run], store, AnalyzeOptions(steps="10:30", **OPTS), show_progress=False)
    assert list(specdyn.open_store(store).steps) == [0, 10, 20, 30, 40]  # rows accumulate


def test_files_removed_after_analysis_stay_in_store(series, tmp_path):
    run, _ = series
    store = tmp_path / "s.zarr"
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    (run / "step_0.safetensors").unlink()  # e.g. HF Trainer's save_total_limit
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    assert list(specdyn.open_store(store).steps) == [0, 10, 20, 30, 40]


def test_truncated_checkpoint_is_skipped_or_fails_with_strict(series, tmp_path):
    run, _ = series
    data = (run / "step_20.safetensors").read_bytes()
    (run / "step_20.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="step_20"):
        summary = analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 4 and len(summary["skipped"]) == 1
    st = specdyn.open_store(run / "specdyn.zarr")
    assert list(st.steps) == [0, 10, 30, 40]
    assert st.attrs["skipped"][0]["checkpoint"] == "step_20.safetensors"
    result = runner.invoke(app, ["analyze", str(run), "--out", str(tmp_path / "strict.zarr"), "--strict", "-q"])
    assert result.exit_code != 0 and "step_20.safetensors" in result.stderr
    assert "Traceback" not in result.stderr


def test_architecture_change_names_the_tensor(tmp_path):
    run = tmp_path / "run"
    write_series(run, steps=(0, 10))
    sd = {k: v.contiguous() for k, v in Net().state_dict().items()}
    sd["fc.weight"] = torch.zeros(9, 8)
    save_file(sd, str(run / "step_20.safetensors"), metadata={"step": "20", "param_order": json.dumps(list(sd))})
    with pytest.raises(SpecdynError, match=r"step_20.*fc\.weight.*\[9, 8\]"):
        analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    assert not (run / "specdyn.zarr" / "zarr.json").exists()  # refused before any work


def test_nan_weights_become_nan_metrics_with_a_warning(tmp_path):
    def poison(step, sd):
        if step == 10:
            sd["fc.weight"][0, 0] = float("nan")

    run = tmp_path / "run"
    write_series(run, steps=(0, 10, 20), mutate=poison)
    with pytest.warns(UserWarning, match="NaN/Inf weights in fc.weight"):
        analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    st = specdyn.open_store(run / "specdyn.zarr")
    j = st.matrices.index("fc.weight")
    er = st.metric("effective_rank")
    assert np.isnan(er[1, j]) and np.all(np.isfinite(np.delete(er[1], j))) and np.isfinite(er[0, j])


def test_store_in_use_is_refused(series):
    run, _ = series
    from specdyn.store import locked

    with locked(run / "specdyn.zarr", "test"):
        result = runner.invoke(app, ["analyze", str(run), "-q"])
    assert result.exit_code == 5
    assert "in use" in result.stderr and "Traceback" not in result.stderr
    assert runner.invoke(app, ["analyze", str(run), "-q"]).exit_code == 0


def test_options_must_match_the_store(series):
    run, _ = series
    analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    with pytest.raises(SpecdynError, match="--top"):
        analyze([run], options=AnalyzeOptions(topk=8, **OPTS), show_progress=False)
    summary = analyze([run], options=AnalyzeOptions(topk=8, overwrite=True, **OPTS), show_progress=False)
    assert summary["computed"] == 5 and specdyn.open_store(run / "specdyn.zarr").top == 8
    with pytest.raises(SpecdynError, match="--heads"):  # heads and pairs may be omitted on a rerun, not changed
        analyze([run], options=AnalyzeOptions(topk=8, heads=2, **OPTS), show_progress=False)
    assert analyze([run], options=AnalyzeOptions(topk=8, **OPTS), show_progress=False)["computed"] == 0


def test_workers_match_serial(series, tmp_path):
    run, _ = series
    analyze([run], tmp_path / "serial.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    analyze([run], tmp_path / "par.zarr", AnalyzeOptions(workers=2, **OPTS), show_progress=False)
    a, b = snapshot(tmp_path / "serial.zarr"), snapshot(tmp_path / "par.zarr")
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k])


def test_dask_local_cluster_matches_serial(series, tmp_path):
    pytest.importorskip("distributed")
    run, _ = series
    analyze([run], tmp_path / "serial.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    analyze([run], tmp_path / "dask.zarr", AnalyzeOptions(workers=2, dask="local", **OPTS), show_progress=False)
    a, b = snapshot(tmp_path / "serial.zarr"), snapshot(tmp_path / "dask.zarr")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k) if a[
            k
        ].dtype.kind == "f" else np.testing.assert_array_equal(a[k], b[k])


def test_cli_json_exit_codes_and_info(series, tmp_path):
    run, _ = series
    result = runner.invoke(app, ["analyze", str(run), "--json", "-q", "--svd-route", "gram"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["checkpoints"] == 5 and summary["store"].endswith("specdyn.zarr")
    info = runner.invoke(app, ["info", str(run), "--json"])
    assert info.exit_code == 0
    doc = json.loads(info.stdout)
    assert doc["checkpoints"] == 5 and doc["steps"] == [0, 10, 20, 30, 40] and doc["heads"] == 4
    assert [m["name"] for m in doc["matrices"]][0] == "embed.weight"
    assert "fc.weight" in runner.invoke(app, ["info", str(run)]).stdout
    # user mistakes: one line, the path, a non-zero code, no traceback
    for args, code in (
        (["analyze", str(tmp_path / "nope")], 1),
        (["analyze", str(tmp_path), "-q"], 3),  # a dir with no checkpoints
        (["info", str(tmp_path / "nope")], 6),
        (["analyze", str(run), "--steps", "x"], 2),  # a usage error
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == code, (args, r.stderr)
        assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_several_run_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_series(a, steps=(0, 10))
    write_series(b, steps=(20, 30), seed=1)
    # without --out: one store per run dir
    assert runner.invoke(app, ["analyze", str(a), str(b), "-q"]).exit_code == 0
    assert len(specdyn.open_store(a / "specdyn.zarr")) == 2 and len(specdyn.open_store(b / "specdyn.zarr")) == 2
    # with --out: one series merged by step (a run resumed into a new folder)
    out = tmp_path / "merged.zarr"
    assert runner.invoke(app, ["analyze", str(a), str(b), "--out", str(out), "-q"]).exit_code == 0
    st = specdyn.open_store(out)
    assert list(st.steps) == [0, 10, 20, 30] and list(st.root["source"][:]) == [0, 0, 1, 1]
    assert st.run_dirs == [a.resolve(), b.resolve()]


def test_watch_picks_up_new_checkpoints_until_interrupted(tmp_path):
    src, run = tmp_path / "src", tmp_path / "run"
    write_series(src, steps=(0, 10, 20))
    run.mkdir()
    shutil.copy(src / "step_0.safetensors", run)
    cmd = [
        sys.executable,
        "-m",
        "specdyn",
        "analyze",
        str(run),
        "--watch",
        "--interval",
        "0.2",
        "-q",
        "--svd-route",
        "gram",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)

    def wait_rows(n):
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if len(specdyn.open_store(run / "specdyn.zarr")) == n:
                    return True
            except Exception:
                pass
            time.sleep(0.05)
        return False

    try:
        assert wait_rows(1)
        for step in (10, 20):  # training writes new checkpoints
            shutil.copy(src / f"step_{step}.safetensors", run)
        assert wait_rows(3)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert list(specdyn.open_store(run / "specdyn.zarr").steps) == [0, 10, 20]
