"""Never writing where the user did not point (issue 17, items 1, 2 and 15's output paths): lock files, default
output paths and every temporary file, against the link attacks of tests/link_attacks.py; and the one atomic
writer (specdyn.files) itself."""

import csv
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specdyn.analyze import analyze
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.files import atomic_open, atomic_path, atomic_write, open_private, output_path
from specdyn.store.locking import _same_file, acquire_lock, lock_path, locked, release_lock
from tests.link_attacks import plant_hard_link, plant_link, untouched, victim
from tests.series import write_series

runner = CliRunner()


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    run = tmp_path_factory.mktemp("links") / "run"
    write_series(run, steps=(0, 10))
    analyze([run], show_progress=False)
    return run


def one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    return err


# --- the atomic writer ---------------------------------------------------------------------------------------


def test_atomic_write_replaces_through_a_fresh_temporary_name(tmp_path):
    out = tmp_path / "a.txt"
    atomic_write(out, "one")
    atomic_write(out, b"two")
    assert out.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]
    seen = []
    with atomic_path(out) as tmp:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.") and str(os.getpid()) in tmp.name
        tmp.write_text("three")
    with atomic_path(out) as tmp:
        seen.append(tmp)
        tmp.write_text("four")
    assert seen[0] != seen[1] and out.read_text() == "four"


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(out, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_link_at_a_path_specdyn_chose_is_refused_one_the_user_named_is_followed(tmp_path):
    v = victim(tmp_path)
    link = tmp_path / "out.csv"
    plant_link(link, v)
    with pytest.raises(SpecdynError, match="symbolic link"):
        atomic_write(link, "x")
    with pytest.raises(SpecdynError, match="symbolic link"):
        with atomic_path(link):
            pass
    assert untouched(v) and link.is_symlink()
    atomic_write(link, "named", named=True)  # the user pointed there: the file it leads to is replaced
    assert v.read_text() == "named" and link.is_symlink()
    assert sorted(os.listdir(v.parent)) == ["bashrc"]


def test_output_path_errors(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecdynError, match="is a folder"):
        output_path(tmp_path / "folder")
    with pytest.raises(SpecdynError, match="is a file, not a folder"):
        output_path(tmp_path / "file" / "x.csv")
    assert output_path(tmp_path / "new" / "x.csv") == tmp_path / "new" / "x.csv" and (tmp_path / "new").is_dir()
    output_path(tmp_path / "later" / "x.csv", create=False)
    assert not (tmp_path / "later").exists()


def test_a_folder_is_swapped_in_whole(tmp_path):
    out = tmp_path / "checkpoint-1"
    for text in ("a", "b"):
        with atomic_path(out, folder=True) as tmp:
            assert tmp.is_dir() and not any(tmp.iterdir())
            (tmp / "w").write_text(text)
    assert (out / "w").read_text() == "b" and os.listdir(tmp_path) == ["checkpoint-1"]


# --- item 1: lock files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["analyze", "derive", "lottery"])
def test_a_link_at_the_lock_path_is_never_written_through(tmp_path, purpose):
    store = tmp_path / "run" / "specdyn.zarr"
    v = plant_link(lock_path(store), victim(tmp_path))
    with pytest.raises(SpecdynError, match="symbolic link"):
        with locked(store, purpose):
            pass
    assert untouched(v)


def test_a_hard_link_at_the_lock_path_is_refused(tmp_path):
    store = tmp_path / "run" / "specdyn.zarr"
    v = plant_hard_link(lock_path(store), victim(tmp_path))
    with pytest.raises(SpecdynError, match="hard links"):
        acquire_lock(store)
    assert untouched(v)


def test_the_lock_file_is_created_exclusively_and_removed_by_its_holder(tmp_path):
    store = tmp_path / "specdyn.zarr"
    with locked(store):
        assert "pid" in lock_path(store).read_text()
    assert not lock_path(store).exists()
    os.close(open_private(lock_path(store)))  # one left by an older specdyn is reused
    a = acquire_lock(store, "derive")
    assert "derive" in lock_path(store).read_text()
    late = open(lock_path(store))  # opened just before the holder lets go: no longer the lock once it has
    release_lock(a)
    assert not lock_path(store).exists() and not _same_file(late, lock_path(store))
    late.close()
    with locked(store, "analyze"):
        with pytest.raises(SpecdynError, match="in use by specdyn analyze"):
            acquire_lock(store)


def test_no_lock_file_is_left_in_the_run_folder(analyzed):
    assert not lock_path(analyzed / "specdyn.zarr").exists()


def test_analyze_and_derive_refuse_a_planted_lock_link(analyzed, tmp_path):
    lock = lock_path(analyzed / "specdyn.zarr")
    v = plant_link(lock, victim(tmp_path))
    try:
        for args in (["analyze", str(analyzed), "-q"], ["derive", str(analyzed)]):
            err = one_line_error(runner.invoke(app, args))
            assert "symbolic link" in err
        assert untouched(v)
    finally:
        lock.unlink()


# --- item 2: default output paths ----------------------------------------------------------------------------


def test_export_refuses_a_link_at_its_default_path_and_follows_a_named_one(analyzed, tmp_path):
    v = victim(tmp_path)
    default = analyzed / "specdyn-layers.csv"
    plant_link(default, v)
    try:
        err = one_line_error(runner.invoke(app, ["export", str(analyzed)]))
        assert str(default) in err and "symbolic link" in err and untouched(v)
        result = runner.invoke(app, ["export", str(analyzed), "-o", str(default)])
        assert result.exit_code == 0, result.output
        assert {r["step"] for r in csv.DictReader(v.open())} == {"0", "10"} and default.is_symlink()
    finally:
        default.unlink()


def test_report_refuses_a_link_at_its_default_path(analyzed, tmp_path, monkeypatch):
    v = victim(tmp_path)
    monkeypatch.chdir(tmp_path)
    plant_link(tmp_path / "report.html", v)
    err = one_line_error(runner.invoke(app, ["report", str(analyzed)]))
    assert "report.html" in err and untouched(v)


def test_train_outputs_never_follow_a_planted_link(tmp_path):
    from specdyn.integrations.core import write_checkpoint
    from specdyn.io.base import write_json

    run = tmp_path / "run"
    v = plant_link(run / "step_000005.safetensors", victim(tmp_path))
    with pytest.raises(SpecdynError, match="symbolic link"):
        write_checkpoint(run, 5, {}, "t", {})
    plant_link(run / "run.json", v)
    with pytest.raises(SpecdynError, match="symbolic link"):
        write_json(run / "run.json", {"a": 1})
    assert untouched(v) and sorted(os.listdir(run)) == ["run.json", "step_000005.safetensors"]


def test_train_overwrite_removes_a_planted_link_not_its_target(tmp_path):
    from specdyn.train import prepare_run_dir

    run = tmp_path / "run"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep").write_text("x")
    plant_link(run / "checkpoint-5", tmp_path / "elsewhere")
    v = plant_link(run / "run.json", victim(tmp_path))
    prepare_run_dir(run, overwrite=True)
    assert untouched(v) and (tmp_path / "elsewhere" / "keep").exists() and not any(run.iterdir())


# --- item 15: bad output paths are one line ------------------------------------------------------------------


def test_bad_output_paths_are_one_line(analyzed, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "plain").write_text("")
    for args, words in [
        (["export", str(analyzed), "-o", str(tmp_path / "folder")], "is a folder"),
        (["export", str(analyzed), "--format", "parquet", "-o", str(tmp_path / "folder")], "is a folder"),
        (["export", str(analyzed), "-o", str(tmp_path / "plain" / "x.csv")], "not a folder"),
        (["plot", "metrics", str(analyzed), "-o", str(tmp_path / "dir.png") + "/"], "is a folder"),
        (["report", str(analyzed), "-o", str(tmp_path / "plain" / "r.html")], "not a folder"),
    ]:
        assert words in one_line_error(runner.invoke(app, args)), args
    assert sorted(os.listdir(tmp_path / "folder")) == []
    result = runner.invoke(app, ["export", str(analyzed), "-o", str(tmp_path / "missing" / "x.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "missing" / "x.csv").read_text().startswith("step,")


def test_plot_writes_through_a_link_the_user_named(analyzed, tmp_path):
    target = tmp_path / "shared" / "fig.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    plant_link(tmp_path / "fig.png", target)
    result = runner.invoke(app, ["plot", "metrics", str(analyzed), "-o", str(tmp_path / "fig.png")])
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"\x89PNG") and (tmp_path / "fig.png").is_symlink()
    assert Path(os.readlink(tmp_path / "fig.png")) == target


# --- item 16: file names that are not UTF-8 ------------------------------------------------------------------


def test_a_run_with_file_names_that_are_not_utf8(tmp_path):
    import json

    from specdyn import open_store
    from specdyn.files import name_path, name_text

    run = tmp_path / os.fsdecode(b"run\xfd")  # the run folder's own name too
    write_series(run, steps=(0, 10))
    odd = os.fsdecode(b"step_10\xff.safetensors")
    os.rename(run / "step_10.safetensors", run / odd)
    (run / os.fsdecode(b"step_20\xfe.safetensors")).write_bytes(b"garbage")  # skipped, and named in the warning
    (run / os.fsdecode(b"notes\xff.txt")).write_text("x")
    result = runner.invoke(app, ["analyze", str(run)])
    assert result.exit_code == 0, result.output
    assert "step_20\\xfe.safetensors" in result.stderr and "\\udc" not in result.stderr
    st = open_store(run)
    assert list(st.checkpoints) == ["step_0.safetensors", "step_10\\xff.safetensors"]
    assert st.checkpoint_paths()[1] == run / odd and name_path(run, name_text(odd)) == run / odd
    again = runner.invoke(app, ["analyze", str(run), "--json", "-q"])
    assert again.exit_code == 0 and json.loads(again.stdout)["computed"] == 0, again.output
    from specdyn.plots.runlog import run_labels

    assert run_labels([st]) == ["run\\xfd"]  # the report's figure labels: matplotlib refuses surrogates
    for args in (["info", str(run), "--json"], ["export", str(run), "-o", "-"], ["info", str(run)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    skipped = json.loads(again.stdout)["skipped"]
    assert [s["checkpoint"] for s in skipped] == ["step_20\\xfe.safetensors"] and "\\xfe" in skipped[0]["reason"]


def test_a_device_the_user_named_is_written_in_place_never_replaced(tmp_path, analyzed):
    import stat

    atomic_write("/dev/null", "x", named=True)
    with atomic_path("/dev/null", named=True) as p:
        assert p == Path("/dev/null")
    result = runner.invoke(app, ["export", str(analyzed), "-o", "/dev/null"])
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # as root, a rename would have replaced the device
    plant_link(tmp_path / "out.csv", Path("/dev/null"))
    with pytest.raises(SpecdynError, match="not a plain file"):
        atomic_write(tmp_path / "out.csv", "x")


def test_two_processes_replacing_one_file_never_share_a_temporary_name(tmp_path):
    """Issue 21: five of the six old writers used `<name>.tmp`, shared by two processes writing the same file
    (two trainings' route caches): one renamed the other's half-written file. Readers now only see whole files."""
    import subprocess
    import sys

    out = tmp_path / "routes.json"
    code = (
        "import sys; from specdyn.files import atomic_write\n"
        "for i in range(150): atomic_write(sys.argv[1], sys.argv[2] * 20000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out), c], env=env) for c in "ab"]
    while any(p.poll() is None for p in procs):
        if out.exists():
            text = out.read_text()
            assert text in ("a" * 20000, "b" * 20000), f"a torn file: {len(text)} characters"
    assert [p.returncode for p in procs] == [0, 0] and os.listdir(tmp_path) == ["routes.json"]
