"""Regression tests for issue #10: every fault an attack on analyze found (kills at creation, a second run during
a rebuild, --watch reading a file still being written, path traversal, tracebacks, full and read-only disks,
newer stores, warning floods, non-float tensors, zero matrices, SVD routes). Numbered as in the issue."""

import builtins
import errno
import io
import json
import os
import re
import shutil
import time
import warnings

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import save_file
from typer.testing import CliRunner

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.cli import app
from specdyn.console import SpecdynWarning
from specdyn.spectral.metrics import spectrum_metrics
from specdyn.store import LOCK_NAME, faults
from specdyn.store.swap import Swap

runner = CliRunner()
OPTS = {"svd_route": "gram"}


def tiny(run, step, sd=None, meta=None, name=None):
    """One small safetensors checkpoint (two matrices)."""
    run.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(step)
    sd = sd or {"a.weight": torch.randn(6, 5, generator=g), "b.weight": torch.randn(3, 6, generator=g)}
    path = run / (name or f"step_{step}.safetensors")
    save_file(sd, str(path), metadata=meta or {"step": str(step), "param_order": json.dumps(list(sd))})
    return path


def tiny_run(tmp_path, steps=(0, 10, 20)):
    run = tmp_path / "run"
    for s in steps:
        tiny(run, s)
    return run


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code=None):
    assert result.exit_code != 0 if code is None else result.exit_code == code, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def arrays_equal(a, b):
    sa, sb = specdyn.open_store(a), specdyn.open_store(b)
    assert list(sa.steps) == list(sb.steps)
    for m in sa.matrices:
        for what in ("sv", "U", "V"):
            np.testing.assert_array_equal(getattr(sa, what)(m), getattr(sb, what)(m), err_msg=f"{m}/{what}")
    for name in ("effective_rank", "stability_score"):
        np.testing.assert_array_equal(sa.metric(name), sb.metric(name))


# 1 ------------------------------------------------------------------------------------------------------------


def test_1_kill_at_creation_leaves_no_store_and_a_rerun_works(tmp_path, killed_analyze):
    run = tiny_run(tmp_path)
    store = tmp_path / "s.zarr"
    assert killed_analyze([run], store, "create:built", **OPTS) == -9  # layout whole, not yet renamed in
    assert not store.exists()
    one_line_error(cli("info", store), code=6)
    assert killed_analyze([run], store, "swap:complete", **OPTS) == -9  # marked complete, not renamed in
    summary = analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)  # finishes the creation
    assert summary["checkpoints"] == 3
    assert not list(tmp_path.glob("s.zarr.*"))


def test_1_layout_created_in_place_by_an_old_version_and_killed_is_repaired(tmp_path):
    run = tiny_run(tmp_path)
    store = tmp_path / "s.zarr"
    root = zarr.open_group(str(store), mode="w-")  # what a kill 40 ms into an old version's creation left
    root.attrs["specdyn"] = {"schema_version": 1, "top": 64}
    root.create_array("step", shape=(0,), chunks=(1,), dtype="int64")
    (store / LOCK_NAME).write_text("")
    one_line_error(cli("info", store))  # "incomplete store ... rerun analyze", not KeyError: 'done'
    assert "incomplete" in cli("info", store).stderr
    assert analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)["checkpoints"] == 3
    assert cli("info", store).exit_code == 0


# 2 ------------------------------------------------------------------------------------------------------------


def test_2_second_analyze_during_a_rebuild_is_refused_and_touches_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for s in (0, 20):
        tiny(run, s)
    store = tmp_path / "s.zarr"
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    tiny(run, 10)  # between stored rows: a rebuild
    tiny(run, 30)
    results = []

    def second_run(name):
        if name == "rebuild:row" and not results:  # the first run is half-way through its rebuild
            side = sorted(p.name for p in tmp_path.iterdir())
            results.append(cli("analyze", run, "--out", store, "-q", "--svd-route", "gram"))
            assert sorted(p.name for p in tmp_path.iterdir()) == side  # its new-tmp is untouched

    monkeypatch.setattr(faults, "handler", second_run)
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    monkeypatch.setattr(faults, "handler", None)
    one_line_error(results[0], code=5)
    assert "in use" in results[0].stderr
    clean = tmp_path / "clean.zarr"
    analyze([run], clean, AnalyzeOptions(**OPTS), show_progress=False)
    arrays_equal(store, clean)


def test_2_only_a_verified_complete_store_is_swapped_in(tmp_path):
    live = tmp_path / "s.zarr"
    live.mkdir()
    (live / "old").write_text("rows")
    swap = Swap(live, verify=lambda p: (p / "whole").exists())
    new = swap.begin()
    new.mkdir()
    with pytest.raises(RuntimeError, match="incomplete"):
        swap.commit()
    assert (live / "old").exists()
    # a killed swap whose new side is marked complete but does not verify is undone, the old one restored
    (new / "x").write_text("half")
    swap.complete.touch()
    os.rename(live, swap.old)
    swap.recover()
    assert (live / "old").exists() and not swap.pending()


# 3 ------------------------------------------------------------------------------------------------------------


def test_3_watch_waits_for_a_file_still_being_written(tmp_path):
    run = tiny_run(tmp_path, steps=(0,))
    old = time.time() - 60
    os.utime(run / "step_0.safetensors", (old, old))
    path = tiny(run, 10)  # just written: mtime now
    store = tmp_path / "s.zarr"
    analyze([run], store, AnalyzeOptions(settle=30, **OPTS), show_progress=False)
    assert list(specdyn.open_store(store).steps) == [0]  # not read, not skipped: waited for
    assert specdyn.open_store(store).attrs["skipped"] == []
    # a file as long as its header says only once its data is all there (a writer that preallocates)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    os.utime(path, (old, old))
    analyze([run], store, AnalyzeOptions(settle=30, **OPTS), show_progress=False)
    assert list(specdyn.open_store(store).steps) == [0]
    path.write_bytes(data)
    os.utime(path, (old, old))
    analyze([run], store, AnalyzeOptions(settle=30, **OPTS), show_progress=False)
    assert list(specdyn.open_store(store).steps) == [0, 10]


def test_3_a_row_whose_file_changed_is_recomputed_with_a_warning(tmp_path):
    run = tiny_run(tmp_path, steps=(0, 10, 20))
    zeros = {"a.weight": torch.zeros(6, 5), "b.weight": torch.zeros(3, 6)}
    tiny(run, 10, sd=zeros)  # read while still zeros (preallocated)
    store = tmp_path / "s.zarr"
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    assert specdyn.open_store(store).metric("frobenius_norm")[1, 0] == 0
    tiny(run, 10)  # then filled: the real weights
    st = os.stat(run / "step_10.safetensors")
    os.utime(run / "step_10.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(SpecdynWarning, match="step_10.*changed since it was analyzed"):
        summary = analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["computed"] == 1
    clean = tmp_path / "clean.zarr"
    analyze([run], clean, AnalyzeOptions(**OPTS), show_progress=False)
    arrays_equal(store, clean)
    root = zarr.open_group(str(store), mode="r")
    assert root["file_bytes"][1] == os.path.getsize(run / "step_10.safetensors")
    assert root["file_mtime_ns"][1] == os.stat(run / "step_10.safetensors").st_mtime_ns


def test_3_stores_without_file_arrays_still_read_and_grow(tmp_path):
    run = tiny_run(tmp_path, steps=(0, 10))
    store = tmp_path / "s.zarr"
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)
    for name in ("file_bytes", "file_mtime_ns"):  # a store made before these arrays existed
        shutil.rmtree(store / name)
    zarr.consolidate_metadata(str(store))
    assert len(specdyn.open_store(store)) == 2
    tiny(run, 20)
    assert analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)["computed"] == 1
    assert list(zarr.open_group(str(store), mode="r")["file_bytes"][:2]) == [-1, -1]


# 4 ------------------------------------------------------------------------------------------------------------


def test_4_failed_first_run_leaves_no_folder_and_overwrite_accepts_leftovers(tmp_path):
    run = tiny_run(tmp_path)
    (tmp_path / "pairs.txt").write_text("a.weight nope.weight\n")
    store = tmp_path / "s.zarr"
    one_line_error(cli("analyze", run, "--out", store, "--alignment-pairs", tmp_path / "pairs.txt", "-q"))
    assert not store.exists()
    store.mkdir()  # what an older version's failed first run left: only its lock
    (store / LOCK_NAME).write_text("specdyn analyze (pid 1)")
    assert cli("analyze", run, "--out", store, "--overwrite", "-q", "--svd-route", "gram").exit_code == 0
    assert len(specdyn.open_store(store)) == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    one_line_error(cli("analyze", run, "--out", tmp_path / "other", "--overwrite", "-q"))
    assert (tmp_path / "other" / "notes.txt").exists()


# 5, 7 ---------------------------------------------------------------------------------------------------------


def hf_sharded(folder, weight_map, shards=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    for name, sd in (shards or {}).items():
        save_file(sd, str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def good_hf(run, step):
    sd = {"a.weight": torch.randn(6, 5), "b.weight": torch.randn(3, 6)}
    hf_sharded(
        run / f"checkpoint-{step}", {"a.weight": "s1.safetensors", "b.weight": "s1.safetensors"}, {"s1.safetensors": sd}
    )


@pytest.mark.parametrize("where", ["../../outside.safetensors", "ABSOLUTE", "link.safetensors"])
def test_5_index_shards_outside_the_checkpoint_are_refused(tmp_path, where):
    outside = tmp_path / "outside.safetensors"
    save_file({"a.weight": torch.full((6, 5), 7.0), "b.weight": torch.randn(3, 6)}, str(outside))
    run = tmp_path / "x" / "run"
    good_hf(run, 10)
    name = str(outside) if where == "ABSOLUTE" else where
    hf_sharded(run / "checkpoint-20", {"a.weight": name, "b.weight": name})
    if where == "link.safetensors":
        (run / "checkpoint-20" / "link.safetensors").symlink_to(outside)
    refused = r"outside the checkpoint folder|not a file inside this folder"
    with pytest.warns(SpecdynWarning, match=refused):
        summary = analyze([run], tmp_path / "s.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 1 and re.search(refused, summary["skipped"][0]["reason"])
    one_line_error(cli("analyze", run, "--out", tmp_path / "t.zarr", "--strict", "-q"))


def test_5_hub_cache_snapshot_links_into_its_blobs(tmp_path):
    from tests.hub_fixtures import add_revision

    shard = "model-00001-of-00001.safetensors"
    files = ["config.json", "model.safetensors.index.json", shard]
    for step in (5, 10):
        folder = tmp_path / "pushed" / f"checkpoint-{step}"
        sd = {"a.weight": torch.randn(6, 5), "b.weight": torch.randn(3, 6)}
        hf_sharded(folder, {"a.weight": shard, "b.weight": shard}, {shard: sd})
        add_revision(tmp_path / "hub", "org/name", f"step{step}", folder, files=files)
    repo = tmp_path / "hub" / "models--org--name"
    assert (next((repo / "snapshots").iterdir()) / shard).is_symlink()  # shards live in blobs/
    summary = analyze([repo], tmp_path / "s.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 2 and not summary["skipped"]


@pytest.mark.parametrize("weight_map", [["a.weight"], {"a.weight": 3}, {}, "s1.safetensors"])
def test_7_malformed_index_is_skipped_with_its_reason(tmp_path, weight_map):
    run = tmp_path / "run"
    good_hf(run, 10)
    hf_sharded(run / "checkpoint-20", weight_map)
    with pytest.warns(SpecdynWarning, match="skipping"):
        summary = analyze([run], tmp_path / "s.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 1 and "model.safetensors.index.json" in summary["skipped"][0]["reason"]


# 6 ------------------------------------------------------------------------------------------------------------


def test_6_out_of_range_step_is_one_skipped_checkpoint(tmp_path):
    run = tiny_run(tmp_path)
    tiny(run, 30, meta={"step": "99999999999999999999999"})
    with pytest.warns(SpecdynWarning, match="out of range"):
        summary = analyze([run], tmp_path / "s.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 3 and "out of range" in summary["skipped"][0]["reason"]
    assert summary["skipped"][0]["checkpoint"] == "step_30.safetensors"
    one_line_error(cli("analyze", run, "--out", tmp_path / "t.zarr", "--strict", "-q"))
    tiny(run, 40, name="step_99999999999999999999999.safetensors", meta={"format": "pt"})
    with pytest.warns(SpecdynWarning, match="out of range"):
        summary = analyze([run], tmp_path / "u.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert summary["checkpoints"] == 3 and len(summary["skipped"]) == 2


# 8 ------------------------------------------------------------------------------------------------------------


def test_8_paths_that_are_loops_or_files_are_one_line_errors(tmp_path):
    run = tiny_run(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line_error(cli("analyze", loop, "-q"))
    one_line_error(cli("analyze", run, "--out", loop, "-q"))
    (tmp_path / "file.zarr").write_text("")
    r = cli("analyze", run, "--out", tmp_path / "file.zarr", "-q")
    one_line_error(r)
    assert "is a file" in r.stderr
    r = cli("analyze", run / "step_0.safetensors", "-q")
    one_line_error(r)
    assert "is a file" in r.stderr


# 9 ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topk", [1000, 10**9, 2**63])
def test_9_topk_above_every_rank_is_refused_up_front(tmp_path, topk):
    run = tiny_run(tmp_path)
    t0 = time.perf_counter()
    r = cli("analyze", run, "--topk", topk, "-q")
    one_line_error(r)
    assert "--topk" in r.stderr and time.perf_counter() - t0 < 60
    assert not (run / "specdyn.zarr").exists()
    assert analyze([run], options=AnalyzeOptions(topk=64, **OPTS), show_progress=False)["checkpoints"] == 3


# 10, 11 -------------------------------------------------------------------------------------------------------


@pytest.fixture
def read_only(monkeypatch):
    """Make every write under a folder fail as on a read-only file system (EROFS)."""
    folders = []
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def under(path):
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return any(p == f or p.startswith(f + os.sep) for f in folders)

    def deny(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def fake_open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            deny(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if under(path):
            deny(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: folders.append(os.path.abspath(folder))


def test_10_read_only_store_is_readable_and_analyze_says_it_cannot_write(tmp_path, read_only):
    run = tiny_run(tmp_path)
    analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    read_only(run)
    assert cli("info", run).exit_code == 0
    r = cli("plot", "rank-heatmap", run, "-o", tmp_path / "fig.png")
    assert r.exit_code == 0, r.stderr
    r = cli("report", run, "-o", tmp_path / "report.html")
    assert r.exit_code == 0, r.stderr
    r = cli("analyze", run, "-q")  # nothing new, and still: one line, not an OSError
    one_line_error(r)
    assert "cannot write there" in r.stderr and "specdyn.zarr" in r.stderr


def test_11_disk_full_is_one_line_and_keeps_the_rows_done(tmp_path, monkeypatch):
    import zarr.storage._local as local

    run = tiny_run(tmp_path, steps=(0, 10, 20, 30))
    store = tmp_path / "s.zarr"
    real_put = local._put
    state = {"rows": 0}

    def full_after_two_rows(name):
        if name == "row:done":
            state["rows"] += 1
            if state["rows"] == 2:
                monkeypatch.setattr(local, "_put", no_space)

    def no_space(path, value, exclusive=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(faults, "handler", full_after_two_rows)
    r = cli("analyze", run, "--out", store, "-q", "--svd-route", "gram")
    monkeypatch.setattr(faults, "handler", None)
    monkeypatch.setattr(local, "_put", real_put)
    one_line_error(r)
    assert str(store) in r.stderr and "no space left" in r.stderr and "more needed" in r.stderr
    assert "2 rows done are kept" in r.stderr
    assert list(specdyn.open_store(store).steps) == [0, 10]
    analyze([run], store, AnalyzeOptions(**OPTS), show_progress=False)  # space freed: the rest is computed
    clean = tmp_path / "clean.zarr"
    analyze([run], clean, AnalyzeOptions(**OPTS), show_progress=False)
    arrays_equal(store, clean)


# 12 -----------------------------------------------------------------------------------------------------------


def test_12_newer_schema_is_read_with_a_warning_and_never_written(tmp_path):
    run = tiny_run(tmp_path)
    store = run / "specdyn.zarr"
    analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["specdyn"]["schema_version"] = 999
    meta.pop("consolidated_metadata", None)
    (store / "zarr.json").write_text(json.dumps(meta))
    before = (store / "zarr.json").read_bytes()
    tiny(run, 30)
    r = cli("analyze", run, "-q")
    one_line_error(r)
    assert "upgrade specdyn" in r.stderr
    assert (store / "zarr.json").read_bytes() == before
    r = cli("info", run)
    assert r.exit_code == 0
    assert [line for line in r.stderr.splitlines() if "warning" in line] == [r.stderr.strip()]
    assert "schema 999" in r.stderr


# 13 -----------------------------------------------------------------------------------------------------------


def test_13_one_line_per_warning_and_a_summary_after_many(tmp_path):
    run = tiny_run(tmp_path, steps=(0, 10))
    for s in range(100, 130):  # 30 damaged checkpoints
        (run / f"step_{s}.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    r = cli("analyze", run, "-q", "--svd-route", "gram")
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    warned = [line for line in lines if line.startswith("warning:") and "no model definition" not in line]
    assert len(warned) == 11 and "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr
    assert lines[-1] == "warning: ... and 20 more skipped; see specdyn info"  # -q: no summary line after it
    assert len(json.loads(cli("info", run, "--json").stdout)["skipped"]) == 30
    with pytest.warns(SpecdynWarning):  # the Python API gets Python warnings instead
        analyze([run], tmp_path / "api.zarr", AnalyzeOptions(**OPTS), show_progress=False)


# 14 -----------------------------------------------------------------------------------------------------------


def test_14_non_float_tensors_are_recorded_not_analyzed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        sd = {
            "a.weight": torch.randn(6, 5),
            "ids": torch.arange(12).reshape(3, 4),
            "mask": torch.ones(4, 4, dtype=torch.bool),
            "codes": torch.ones(4, 4, dtype=torch.uint8),
            "rot": torch.randn(4, 4, dtype=torch.complex64),
        }
        torch.save({"state_dict": sd, "step": step}, run / f"step_{step}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "casting complex to real discards the imaginary part"
        warnings.filterwarnings("ignore", message=".*no model definition")  # the structure guess is said
        analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    st = specdyn.open_store(run / "specdyn.zarr")
    assert st.matrices == ["a.weight"]
    skipped = {t["name"]: t["dtype"] for t in st.attrs["skipped_tensors"]}
    assert skipped == {"ids": "int64", "mask": "bool", "codes": "uint8", "rot": "complex64"}
    doc = json.loads(cli("info", run, "--json").stdout)
    assert {t["name"] for t in doc["skipped_tensors"]} == set(skipped)
    assert "complex64" in cli("info", run).stdout


# 15 -----------------------------------------------------------------------------------------------------------


def test_15_zero_matrix_has_defined_metrics_without_runtime_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*no model definition")  # the structure guess is said
        m = spectrum_metrics(np.zeros(5))
        for name in ("effective_rank", "count90", "stable_rank", "gini"):
            assert np.isnan(m[name]), name
        assert m["spectral_norm"] == m["frobenius_norm"] == m["nuclear_norm"] == 0
        for s in (np.ones(7), np.ones(64), np.full(384, 3.0)):  # rounding gave 1.0000000000000004
            assert 1 - 1e-12 < spectrum_metrics(s)["effective_rank"] <= 1.0
        run = tmp_path / "run"
        for s in (0, 10):
            tiny(run, s, sd={"a.weight": torch.zeros(6, 5), "b.weight": torch.randn(3, 6)})
        analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    st = specdyn.open_store(run / "specdyn.zarr")
    assert np.all(np.isnan(st.metric("effective_rank")[:, 0])) and np.all(st.metric("spectral_norm")[:, 0] == 0)
    assert np.all(st.metric("effective_rank")[:, 1] <= 1) and np.all(np.isfinite(st.metric("effective_rank")[:, 1]))


# 16, 17 -------------------------------------------------------------------------------------------------------


def route_cache(tmp_path, monkeypatch, name, routes):
    from specdyn.spectral.svd import cache_entry, cache_key

    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    table = {cache_key(tuple(map(int, shape.split("x")))): cache_entry(r) for shape, r in routes.items()}
    (folder / "svd_routes.json").write_text(json.dumps(table))
    monkeypatch.setenv("SPECDYN_CACHE_DIR", str(folder))
    return folder / "svd_routes.json"


def test_16_a_rerun_uses_the_store_routes_and_measures_only_new_shapes(tmp_path, monkeypatch):
    run = tiny_run(tmp_path, steps=(0, 10))
    store = tmp_path / "s.zarr"
    route_cache(tmp_path, monkeypatch, "machine-a", {"6x5": "lapack", "3x6": "lapack"})
    analyze([run], store, AnalyzeOptions(), show_progress=False)
    assert specdyn.open_store(store).attrs["svd_routes"] == {"6x5": "lapack", "3x6": "lapack"}
    clean = tmp_path / "clean.zarr"
    tiny(run, 20)
    analyze([run], clean, AnalyzeOptions(), show_progress=False)  # every row by machine a's routes
    cache_b = route_cache(tmp_path, monkeypatch, "machine-b", {"6x5": "gram_torch", "3x6": "gram"})
    before = cache_b.read_text()
    analyze([run], store, AnalyzeOptions(), show_progress=False)  # the new row on "machine b"
    assert specdyn.open_store(store).attrs["svd_routes"] == {"6x5": "lapack", "3x6": "lapack"}
    assert cache_b.read_text() == before  # nothing measured: every shape's route came from the store
    arrays_equal(store, clean)
    r = cli("analyze", run, "--out", store, "--svd-route", "gram", "-q")  # pinning another route would mix them
    one_line_error(r)
    assert "lapack" in r.stderr


def test_17_routes_are_written_with_the_rows_and_partial_files_removed(tmp_path, monkeypatch):
    run = tiny_run(tmp_path)
    store = tmp_path / "s.zarr"

    class Killed(BaseException):
        pass

    def die(name):
        if name == "row:done":
            raise Killed

    monkeypatch.setattr(faults, "handler", die)
    with pytest.raises(Killed):
        analyze([run], store, AnalyzeOptions(svd_route="auto"), show_progress=False)
    monkeypatch.setattr(faults, "handler", None)
    st = specdyn.open_store(store)
    assert len(st) == 1 and set(st.attrs["svd_routes"]) == {"6x5", "3x6"}
    partial = store / "effective_rank" / "c" / "1.0b1c2d3e.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"")
    analyze([run], store, AnalyzeOptions(), show_progress=False)
    assert not list(store.rglob("*.partial"))
    assert len(specdyn.open_store(store)) == 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_full_disk_or_read_only_folder_in_any_command_is_one_line(tmp_path, monkeypatch, code):
    """Every command (not only analyze): a full disk, a read-only or forbidden folder is one line naming the file."""
    import specdyn.evals.prune as prune_mod
    from specdyn.cli import app

    target = tmp_path / "evals.zarr" / "c" / "0"

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(prune_mod, "prune_eval", full)
    res = CliRunner().invoke(app, ["prune-eval", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert str(target) in " ".join(res.output.split()) and "error:" in res.output


def test_other_os_errors_still_surface_as_bugs(tmp_path, monkeypatch):
    import specdyn.evals.prune as prune_mod
    from specdyn.cli import app

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error", "x")

    monkeypatch.setattr(prune_mod, "prune_eval", broken)
    res = CliRunner().invoke(app, ["prune-eval", str(tmp_path)])
    assert res.exit_code != 0 and isinstance(res.exception, OSError)
