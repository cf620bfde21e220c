"""The Python API a notebook uses: names that stay what they are, stores as tables (pandas, xarray), and matrix
names as figures print them."""

import importlib
import pkgutil

import numpy as np
import pytest

import specdyn
from specdyn.errors import SpecdynError
from tests.series import write_series


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    run = tmp_path_factory.mktemp("api") / "run"
    write_series(run, steps=(0, 10, 20))
    specdyn.analyze([run], show_progress=False)
    return specdyn.open_store(run)


def test_public_names_stay_after_importing_every_subpackage(tmp_path):
    before = {name: getattr(specdyn, name) for name in specdyn.__all__}
    for m in pkgutil.walk_packages(specdyn.__path__, "specdyn."):
        if m.name != "specdyn.__main__":  # runs the CLI
            importlib.import_module(m.name)
    after = {name: getattr(specdyn, name) for name in specdyn.__all__}
    assert after == before
    for name in ("analyze", "open_store", "to_dataframe", "discover", "open_checkpoint"):
        assert callable(after[name]), name
    # The README's call, twice in one process (the first imports the `specdyn.analyze` package).
    for i in range(2):
        write_series(tmp_path / f"r{i}", steps=(0, 10))
        summary = specdyn.analyze([tmp_path / f"r{i}"], options=specdyn.AnalyzeOptions(topk=4), show_progress=False)
        assert summary["checkpoints"] == 2
    from specdyn.analyze import run  # the package's modules stay reachable

    assert run.analyze.__name__ == "analyze"


def test_to_dataframe_is_long_and_matches_the_arrays(store):
    df = store.to_dataframe()
    n, k = len(store), len(store.matrices)
    assert len(df) == n * k
    assert list(df.columns[:7]) == ["run", "step", "checkpoint", "matrix", "label", "kind", "layer"]
    for metric in ("effective_rank", "alpha", "stability_score"):
        table = df.pivot(index="step", columns="matrix", values=metric)[store.matrices].to_numpy()
        np.testing.assert_array_equal(table, store.metric(metric))
    row = df[(df.step == 10) & (df.matrix == "fc.weight")].iloc[0]
    assert (row.label, row.kind, row.layer, row.run) == ("fc", "linear", store.matrices.index("fc.weight"), "run")


def test_to_dataframe_narrows_by_metric_step_and_short_name(store):
    df = store.to_dataframe(metrics="alpha", steps="10:", matrices=["in_proj", "out"])
    assert list(df.columns[7:]) == ["alpha"]
    assert sorted(set(df.step)) == [10, 20]
    assert sorted(set(df.matrix)) == ["attn.in_proj_weight", "out.weight"]
    assert len(store.to_dataframe(steps=[0, 20])) == 2 * len(store.matrices)
    with pytest.raises(SpecdynError, match="no checkpoint at step 5"):
        store.to_dataframe(steps=5)
    with pytest.raises(SpecdynError, match="unknown metric"):
        store.to_dataframe(metrics="rank")


def test_several_stores_get_store_and_group_columns(store, tmp_path):
    other = tmp_path / "other"
    write_series(other, steps=(0, 10), seed=1)
    specdyn.analyze([other], show_progress=False)
    df = specdyn.to_dataframe([store, other], metrics=["effective_rank"])
    assert list(df.columns[:2]) == ["store", "run"]
    assert df.groupby("store").size().to_dict() == {"run": 3 * 6, "other": 2 * 6}
    grouped = specdyn.to_dataframe({"wd1": [store], "wd0": other}, metrics="gini", steps=[0])
    assert list(grouped.columns[:2]) == ["group", "store"] and set(grouped.group) == {"wd1", "wd0"}


def test_to_xarray_is_indexed_by_step(store):
    ds = store.to_xarray()
    assert list(ds.indexes["step"]) == list(store.steps)
    assert list(ds.checkpoint.values) == store.checkpoints
    fc = float(ds.effective_rank.sel(step=10, matrix="fc.weight").values)
    assert fc == store.metric("effective_rank")[1, store.matrices.index("fc.weight")]
    assert list(ds.label.values) == ["embed", "attn.in_proj", "attn.out_proj", "conv", "fc", "out"]
    assert float(ds.effective_rank.sel(step=10, label="fc").values) == fc  # by the name figures print


def test_matrix_names_as_figures_show_them(store):
    np.testing.assert_array_equal(store.sv("out"), store.sv("out.weight"))
    assert store.check_matrix("attn.in_proj") == "attn.in_proj_weight"  # the figure label
    assert store.check_matrix("out_proj") == "attn.out_proj.weight"  # a dotted tail naming one matrix
    with pytest.raises(SpecdynError, match="names 5 matrices"):
        store.sv("weight")
    with pytest.raises(SpecdynError, match="no matrix 'xyz'"):
        store.stability("xyz")
    full = "attn.in_proj_weight -> attn.out_proj.weight"
    np.testing.assert_array_equal(store.alignment("attn.in_proj → out_proj"), store.alignment(full))
    assert store.pair_spec("attn.in_proj -> out_proj").name == full


# A metric declared once (docs/architecture.md "Add a metric"), before anything imports the declaration, reaches
# every reader: info, export, to_dataframe, figure labels and scales, the report's table, the callbacks' logs.
DECLARE_AND_READ = """
import json, sys
import numpy as np
from specdyn.spectral import metrics as m

m.METRICS["top2_ratio"] = m.Metric("top2_ratio", "σ₂ / σ₁", "[0, 1]", m.METRICS["spectral_norm"].doc, unit=True,
                                   fn=lambda s: s[..., 1] / s[..., 0], summary="mean")

import specdyn
from specdyn.commands.export import layer_table
from specdyn.commands.info import store_summary
from specdyn.integrations.core import PREFIX, summaries
from specdyn.plots import PLOTS, style
from specdyn.report import metrics_table

st = specdyn.open_store(sys.argv[1])
want = np.array([[st.sv(n)[i, 1] / st.sv(n)[i, 0] for n in st.matrices] for i in range(len(st))])
fig = PLOTS["rank-heatmap"]([st], metric="top2_ratio")
print(json.dumps({
    "info": bool(np.allclose([r["top2_ratio"] for r in store_summary(st)["matrices"]], want[-1])),
    "export": bool(np.allclose([r["top2_ratio"] for r in layer_table(st)], want[-1])),
    "frame": bool(np.allclose(st.to_dataframe(metrics="top2_ratio")["top2_ratio"], want.ravel())),
    "label": style.metric_label("top2_ratio"),
    "scale": list(fig.axes[0].collections[0].get_clim()),
    "report": "σ₂ / σ₁" in metrics_table(st),
    "callbacks": bool(np.isclose(summaries(st.path)[-1][1][PREFIX + "top2_ratio"], want[-1].mean())),
}))
"""


def test_a_metric_declared_once_reaches_every_reader(store):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", DECLARE_AND_READ, str(store.path)], capture_output=True,
                          text=True, cwd=root, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"info": True, "export": True, "frame": True, "label": "σ₂ / σ₁", "scale": [0.0, 1.0],
                   "report": True, "callbacks": True}  # fmt: skip


def test_the_notebook_example_runs(tmp_path):
    """examples/notebook.py, the README's notebook workflow: analyze, to_dataframe, a figure."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "notebook.py"
    spec = importlib.util.spec_from_file_location("notebook_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    run = tmp_path / "run"
    write_series(run, steps=(0, 10, 20))
    got = example.main(run, tmp_path / "figures")
    st = specdyn.open_store(run)
    assert got["summary"]["checkpoints"] == 3 and len(got["table"]) == 3 * len(st.matrices)
    assert list(got["by_kind"].index) == [0, 10, 20] and "attention_in_proj" in got["by_kind"].columns
    assert set(got["in_proj"].matrix) == {"attn.in_proj_weight"}
    assert got["figure"].read_bytes()[:4] == b"\x89PNG"
