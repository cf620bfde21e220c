"""A real store written by the first release (schema 1, tests/fixtures/schema1_store) is read by every command,
and a writing command migrates it to the current schema without a traceback."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.cli import app

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "schema1_store"
SAMPLES = HERE.parent / "sample_checkpoints" / "modadd-wd1"
CHECKPOINTS = ("step_000000.safetensors", "step_002000.safetensors", "step_004000.safetensors")
runner = CliRunner()


def schema1_run(tmp: Path) -> Path:
    """RUN/specdyn.zarr (the fixture) beside the three checkpoints it was made from, as it was left."""
    run = tmp / "run"
    run.mkdir()
    shutil.copytree(FIXTURE, run / "specdyn.zarr")
    shutil.copy(SAMPLES / "run.json", run / "run.json")
    root = zarr.open_group(str(FIXTURE), mode="r")
    names = [str(c) for c in root["checkpoint"][:]]
    for name, size, mtime in zip(names, root["file_bytes"][:], root["file_mtime_ns"][:]):
        shutil.copy(SAMPLES / name, run / name)
        assert (run / name).stat().st_size == size
        os.utime(run / name, ns=(int(mtime), int(mtime)))
    return run


@pytest.fixture
def run(tmp_path):
    return schema1_run(tmp_path)


def test_fixture_is_schema_1_and_untouched():
    meta = json.loads((FIXTURE / "zarr.json").read_text())
    assert meta["attributes"]["specdyn"]["schema_version"] == 1
    assert (FIXTURE / "matrices" / "embed.weight" / "U" / "zarr.json").exists()


def test_reading_commands(run, tmp_path):
    st = specdyn.open_store(run)
    assert list(st.steps) == [0, 2000, 4000] and len(st.matrices) == 6
    assert np.isfinite(st.metric("effective_rank")).all() and np.isfinite(st.metric("alpha")).all()
    assert st.sv("embed.weight").shape == (3, 114) and st.U("decoder.weight").shape == (3, 113, 12)
    info = runner.invoke(app, ["info", str(run), "--json"])
    assert info.exit_code == 0, info.output
    assert len(json.loads(info.stdout)["matrices"]) == 6
    out = tmp_path / "t.csv"
    exported = runner.invoke(app, ["export", str(run), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    assert out.read_text().count("\n") >= 7
    png = tmp_path / "f.png"
    for kind in ("rank-heatmap", "prune"):
        drawn = runner.invoke(app, ["plot", kind, str(run), "-o", str(png), "--dpi", "80"])
        assert drawn.exit_code == 0, drawn.output
        assert png.stat().st_size > 0
    html = tmp_path / "r.html"
    report = runner.invoke(app, ["report", str(run), "-o", str(html), "--dpi", "80"])
    assert report.exit_code == 0, report.output
    assert "embed.weight" in html.read_text()


def test_writing_commands_migrate_it(run):
    before = specdyn.open_store(run)
    sv = before.sv("layers.0.linear1.weight")
    derived = runner.invoke(app, ["derive", str(run), "--json"])
    assert derived.exit_code == 0, derived.output
    migrated = json.loads((run / "specdyn.zarr" / "zarr.json").read_text())["attributes"]["specdyn"]
    assert migrated["schema_version"] == 2 and migrated.get("unfilled", []) == []  # per-matrix groups kept
    assert (run / "specdyn.zarr" / "matrices" / "embed.weight" / "sv" / "zarr.json").exists()
    summary = analyze([run], options=AnalyzeOptions(topk=12), show_progress=False)
    assert summary["computed"] == 0 and summary["checkpoints"] == 3
    after = specdyn.open_store(run)
    np.testing.assert_array_equal(after.sv("layers.0.linear1.weight"), sv)
    np.testing.assert_array_equal(after.metric("effective_rank"), before.metric("effective_rank"))
    assert after.has_results("prune")
    pruned = runner.invoke(app, ["prune-eval", str(run), "-q", "--json"])
    assert pruned.exit_code == 0, pruned.output
