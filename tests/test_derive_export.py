"""Heavy-tail arrays in the store: written by analyze, added to an older store by `specdyn derive` (without the
checkpoints), computed on the fly when reading a store that lacks them; `specdyn export` and `info --json`."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from specdyn import open_store
from specdyn.analyze import analyze
from specdyn.cli import app
from specdyn.spectral.heavy_tail import HEAVY_TAIL_METRICS, heavy_tail_metrics
from specdyn.store.writing import open_root
from tests.series import write_series


@pytest.fixture
def run(tmp_path):
    write_series(tmp_path / "run", steps=(0, 10, 20))
    analyze([tmp_path / "run"], show_progress=False)
    return tmp_path / "run"


def _make_old(store):
    """Strip the heavy-tail arrays and the marker, as a store written before them looks."""
    for name in HEAVY_TAIL_METRICS:
        shutil.rmtree(store / name)
    root = open_root(store, "a")
    attrs = dict(root.attrs["specdyn"])
    attrs["derived"].pop("heavy_tail")
    root.attrs["specdyn"] = attrs
    meta = json.loads((store / "zarr.json").read_text())
    meta.pop("consolidated_metadata", None)
    (store / "zarr.json").write_text(json.dumps(meta))


def test_analyze_writes_heavy_tail_from_the_stored_sv(run):
    st = open_store(run)
    for j, name in enumerate(st.matrices):
        n_max = max(st.matrix_spec(name).shape)
        for i, s in enumerate(st.sv(name)):
            expect = heavy_tail_metrics(s, n_max)
            for m in HEAVY_TAIL_METRICS:
                np.testing.assert_equal(st.metric(m)[i, j], expect[m])
    assert np.isfinite(st.metric("alpha")).all()


def test_old_store_reads_then_derive_adds_without_checkpoints(run):
    store = run / "specdyn.zarr"
    before = open_store(run)
    expect = {m: before.metric(m) for m in HEAVY_TAIL_METRICS}
    sv_before = before.sv(before.matrices[0])
    _make_old(store)
    old = open_store(run)
    assert not old.has_heavy_tail()
    for m in HEAVY_TAIL_METRICS:  # computed on the fly, not written
        np.testing.assert_array_equal(old.metric(m), expect[m])
    assert not (store / "alpha").exists()
    for ckpt in run.glob("step_*.safetensors"):  # derive must not need them
        ckpt.unlink()
    result = CliRunner().invoke(app, ["derive", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["heavy_tail_cells"] == 3 * len(old.matrices)
    new = open_store(run)
    assert new.has_heavy_tail()
    for m in HEAVY_TAIL_METRICS:
        np.testing.assert_array_equal(new.metric(m), expect[m])
    np.testing.assert_array_equal(new.sv(new.matrices[0]), sv_before)
    # a second derive finds nothing missing
    again = CliRunner().invoke(app, ["derive", str(run), "--json"])
    assert json.loads(again.stdout)["heavy_tail_cells"] == 0


def test_rerun_of_analyze_adds_them_to_an_old_store(run):
    _make_old(run / "specdyn.zarr")
    summary = analyze([run], show_progress=False)
    assert summary["computed"] == 0
    assert open_store(run).has_heavy_tail()


def test_old_store_grows_then_rebuilds(run, tmp_path):
    """New checkpoints into an old store (rebuild path: a step between existing ones)."""
    _make_old(run / "specdyn.zarr")
    write_series(tmp_path / "more", steps=(5,))
    shutil.copy(tmp_path / "more" / "step_5.safetensors", run / "step_5.safetensors")
    analyze([run], show_progress=False)
    st = open_store(run)
    assert list(st.steps) == [0, 5, 10, 20] and np.isfinite(st.metric("matrix_rank")).all()


def test_export_csv_and_info(run, tmp_path):
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["export", str(run), "--step", "10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    st = open_store(run)
    assert [r["name"] for r in rows] == st.matrices and {r["step"] for r in rows} == {"10"}
    j = st.matrices.index("fc.weight")
    assert float(rows[j]["alpha"]) == pytest.approx(st.metric("alpha")[1, j], rel=1e-12)
    assert float(rows[j]["xmin"]) == pytest.approx(st.metric("pl_xmin")[1, j], rel=1e-12)
    assert float(rows[j]["lambda_max"]) == pytest.approx(st.sv("fc.weight")[1, 0] ** 2)
    bad = CliRunner().invoke(app, ["export", str(run), "--step", "7"])
    assert bad.exit_code != 0 and "no checkpoint at step 7" in bad.output
    info = json.loads(CliRunner().invoke(app, ["info", str(run), "--json"]).stdout)
    assert info["matrices"][j]["alpha"] == pytest.approx(st.metric("alpha")[-1, j])
    assert info["layers"][j]["step"] == 20 and info["layers"][j]["alpha"] == pytest.approx(st.metric("alpha")[-1, j])
    info = json.loads(CliRunner().invoke(app, ["info", str(run), "--json", "--step", "10"]).stdout)
    assert [r["alpha"] for r in info["layers"]] == pytest.approx([float(r["alpha"]) for r in rows])


def test_export_parquet(run, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "t.parquet"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "parquet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    assert table[0]["step"] == 0 and "alpha" in table[0]


def test_export_writes_every_step_long_by_default(run, tmp_path):
    st = open_store(run)
    result = CliRunner().invoke(app, ["export", str(run), "--json", "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    path = Path(doc["written"][0])
    assert path == st.path.parent / "specdyn-layers.csv" and doc["steps"] == [int(s) for s in st.steps]
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == doc["rows"] == len(st) * len(st.matrices)
    alpha = np.array([float(r["alpha"]) for r in rows]).reshape(len(st), len(st.matrices))
    np.testing.assert_allclose(alpha, st.metric("alpha"), rtol=1e-12)
    out = tmp_path / "range.csv"
    narrowed = CliRunner().invoke(app, ["export", str(run), "--steps", "5:", "-o", str(out), "--json"])
    assert json.loads(narrowed.stdout)["steps"] == [10, 20]
    path.unlink()
