"""Regression tests for issue #17 (reliability, round 3), the store's part: readers of a store whose first run was
stopped (6), derive repairing before it holds the lock (7), damaged chunks, files and folders and
`analyze --repair` (14), damaged attributes and linked stores (15), checkpoints too large to allocate (18).
Numbered as in the issue."""

import json
import shutil

import numpy as np
import pytest
import zarr

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.store import faults, locked
from tests.test_reliability import cli, one_line_error, tiny_run
from tests.test_scale import assert_identical

OPTS = AnalyzeOptions(svd_route="gram")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("template"))
    analyze([run], None, OPTS, show_progress=False)
    return run


@pytest.fixture
def made(template, tmp_path):
    """A run of three checkpoints and its store (a copy of one analyzed once, file times kept)."""
    run = tmp_path / "run"
    shutil.copytree(template, run)
    return run, run / "specdyn.zarr"


def edit_attrs(store, change, array=""):
    """Change the attributes in an array's (or the root's) zarr.json, dropping the consolidated copy."""
    meta = store / array / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"])
    doc.pop("consolidated_metadata", None)
    meta.write_text(json.dumps(doc))
    if array:
        root = json.loads((store / "zarr.json").read_text())
        root.pop("consolidated_metadata", None)
        (store / "zarr.json").write_text(json.dumps(root))


# 6 ------------------------------------------------------------------------------------------------------------


def test_6_a_first_run_stopped_after_a_row_reads_that_row(tmp_path, monkeypatch):
    run = tiny_run(tmp_path)

    class Stop(Exception):
        pass

    def stop(name):
        if name == "row:done":
            raise Stop

    monkeypatch.setattr(faults, "handler", stop)
    with pytest.raises(Stop):
        analyze([run], None, OPTS, show_progress=False)
    monkeypatch.setattr(faults, "handler", None)
    st = specdyn.open_store(run)
    assert len(st) == 1 and st.run_dirs == [run]  # the sources are recorded before the first row is done
    assert st.checkpoint_paths() == [run / "step_0.safetensors"]
    # a store an older version left this way (no sources yet) reads its rows from the store's folder
    edit_attrs(run / "specdyn.zarr", lambda a: a["specdyn"].pop("sources"))
    for args in (("info", run), ("plot", "sv", run, "-o", tmp_path / "sv.png")):
        result = cli(*args)
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    # no completed row: one line
    zarr.open_group(str(run / "specdyn.zarr"), mode="r+", use_consolidated=False)["done"][:] = False
    for args in (("plot", "metrics", run, "-o", tmp_path / "m.png"), ("export", run)):
        result = cli(*args)
        one_line_error(result)
        assert "no completed checkpoint" in result.stderr


# 7 ------------------------------------------------------------------------------------------------------------


def test_7_derive_touches_nothing_before_it_holds_the_lock(made):
    run, store = made
    building = store.with_name("specdyn.zarr.new-tmp")  # what a rebuild in progress has beside the store
    shutil.copytree(store, building)
    with locked(store):  # held by the "analyze" building it
        result = cli("derive", run)
    one_line_error(result, 5)
    assert (building / "zarr.json").is_file()


# 14 -----------------------------------------------------------------------------------------------------------


def test_14_damaged_chunks_are_named_and_repair_recomputes_their_rows(made, tmp_path):
    run, store = made
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    (store / "effective_rank" / "c.1.0").write_bytes(b"garbage")  # zstd cannot decode it
    u = store / "matrices" / "a.weight" / "U" / "c.1.0.0"
    u.write_bytes(u.read_bytes()[:10])  # truncated
    (store / "matrices" / "b.weight" / "sv" / "c.2.0").unlink()  # would read as NaN
    for args in (("info", run), ("export", run), ("plot", "metrics", run, "-o", tmp_path / "m.png")):
        result = cli(*args)
        one_line_error(result)
        assert "damaged array effective_rank" in result.stderr and "--repair" in result.stderr
    (store / "effective_rank" / "c.1.0").write_bytes((reference / "effective_rank" / "c.1.0").read_bytes())
    for args in (("info", run), ("analyze", run, "--svd-route", "gram")):  # both name the chunk read as NaN
        result = cli(*args)
        assert result.exit_code == 0 and "matrices/b.weight/sv (row 2)" in result.stderr, result.stderr
    (store / "effective_rank" / "c.1.0").write_bytes(b"garbage")
    result = cli("derive", run)
    one_line_error(result)
    assert "effective_rank (row 1)" in result.stderr and "matrices/a.weight/U (row 1)" in result.stderr
    (store / "step" / "c.1").write_bytes(b"garbage")  # whose row it is: lost (the row is dropped, then re-added)
    result = cli("analyze", run, "--svd-route", "gram")
    one_line_error(result)
    assert "step (row 1)" in result.stderr and "--repair" in result.stderr
    result = cli("analyze", run, "--svd-route", "gram", "--repair")
    assert result.exit_code == 0 and "2 rows recomputed" in result.stderr, result.stderr
    assert_identical(reference, store)
    (store / "matrix" / "c.0").write_bytes(b"garbage")  # the matrix names: nothing to recompute rows into
    for args in (("info", run), ("analyze", run, "--repair")):
        result = cli(*args)
        one_line_error(result)
        assert "damaged array matrix" in result.stderr and "--overwrite" in result.stderr


def test_14_a_deleted_matrix_folder_is_named_and_repaired(made, tmp_path):
    run, store = made
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    shutil.rmtree(store / "matrices")
    for args in (("derive", run), ("info", run), ("analyze", run, "--svd-route", "gram")):
        result = cli(*args)
        one_line_error(result)
        assert "matrices/a.weight/sv" in result.stderr and "--repair" in result.stderr
    result = cli("analyze", run, "--svd-route", "gram", "--repair")
    assert result.exit_code == 0, result.stderr
    assert_identical(reference, store)


# 15 -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, change, named",
    [
        ("", lambda a: a["specdyn"].update(top="64"), "top"),
        ("matrix", lambda a: a["original_shapes"].update({"a.weight": [6, "5"]}), "original shape of matrix"),
        ("matrix", lambda a: a["kinds"].pop("b.weight"), "kind of matrix"),
    ],
)
def test_15_damaged_attributes_are_one_line(made, tmp_path, array, change, named):
    run, store = made
    edit_attrs(store, change, array)
    for args in (("info", run), ("report", run, "-o", tmp_path / "r.html"), ("analyze", run), ("derive", run)):
        result = cli(*args)
        one_line_error(result)
        assert "damaged attributes" in result.stderr and named in result.stderr


def test_15_linked_stores_and_sides(tmp_path):
    run = tiny_run(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "s.zarr"
    analyze([run], elsewhere, OPTS, show_progress=False)
    (run / "specdyn.zarr").symlink_to(elsewhere)
    for args in (("analyze", run), ("derive", run)):  # a link at the path specdyn chose is not written through
        result = cli(*args)
        one_line_error(result)
        assert "symbolic link" in result.stderr and str(elsewhere) in result.stderr
    assert cli("analyze", run, "--out", run / "specdyn.zarr", "--svd-route", "gram").exit_code == 0  # named: followed
    assert (run / "specdyn.zarr").is_symlink() and specdyn.open_store(run).run_dirs == [run]
    (run / "specdyn.zarr").unlink()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    for side in ("specdyn.zarr.new-tmp", "specdyn.zarr.old-tmp", "specdyn.zarr.new-tmp.complete"):
        (run / side).symlink_to(victim)
    result = cli("analyze", run, "--svd-route", "gram")
    assert result.exit_code == 0, result.stderr
    assert (victim / "keep").read_text() == "keep" and not (run / "specdyn.zarr").is_symlink()
    assert not any(p.is_symlink() for p in run.iterdir())


# 18 -----------------------------------------------------------------------------------------------------------


def test_18_checkpoints_too_large_to_allocate_end_with_exit_3_and_no_store(tmp_path, monkeypatch):
    import specdyn.io.safetensors_file as st

    def no_memory(*args, **kwargs):
        raise MemoryError

    run = tiny_run(tmp_path)
    monkeypatch.setattr(st, "_pread_array", no_memory)
    result = cli("analyze", run, "--svd-route", "gram")
    assert result.exit_code == 3 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "not enough memory" in result.stderr and "corrupt" not in result.stderr
    assert not (run / "specdyn.zarr").exists() and not list(run.glob("specdyn.zarr*"))
    assert np.all([p.suffix == ".safetensors" or p.name.endswith(".lock") for p in run.iterdir()])


def test_14_a_damaged_shard_of_packed_matrices_is_repaired(tmp_path, monkeypatch):
    """Stores of many matrices pack them by shape into shards (schema 2): a write into a damaged shard would read it
    first, so --repair deletes the files holding the row instead."""
    import specdyn.store.layout as layout

    monkeypatch.setattr(layout, "PACK_ABOVE", 1)
    run = tiny_run(tmp_path)
    analyze([run], None, OPTS, show_progress=False)
    store = run / "specdyn.zarr"
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    shard = sorted((store / "svd").glob("*/sv/c.1.*"))[0]
    shard.write_bytes(b"garbage")
    result = cli("info", run)
    one_line_error(result)
    assert f"svd/{shard.parent.parent.name}/sv" in result.stderr
    result = cli("analyze", run, "--svd-route", "gram", "--repair")
    assert result.exit_code == 0 and "1 rows recomputed" in result.stderr, result.stderr
    assert_identical(reference, store)
