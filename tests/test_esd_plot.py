"""The `esd` figure draws each chosen checkpoint's eigenvalue density and the store's own power-law fit; alpha
is a metric `metrics` and `compare` draw from the store."""

import numpy as np
import pytest

import specdyn
from specdyn.errors import SpecdynError
from specdyn.plots import PLOTS
from specdyn.plots.esd import pick_rows
from tests.figure_checks import check_figure
from tests.synthetic_store import transformer_shapes, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("esd") / "run" / "specdyn.zarr"
    return specdyn.open_store(write_store(path, transformer_shapes(1, d=48), [0, 1, 3, 10, 30, 100, 300, 1000]))


def test_pick_rows_log_spaced():
    assert list(pick_rows(3, 5)) == [0, 1, 2]
    rows = pick_rows(100, 5)
    assert rows[0] == 0 and rows[-1] == 99 and len(rows) <= 6 and np.all(np.diff(rows) > 0)
    assert rows[1] < 10  # dense early


def test_esd_draws_density_and_fit(store):
    name = "model.layers.0.linear1.weight"
    fig = PLOTS["esd"]([store], matrix=name, checkpoints=3)
    ax = fig.axes[0]
    steps = store.steps[pick_rows(len(store), 3)]
    density = [l for l in ax.lines if l.get_label().startswith("step ")]
    assert [l.get_label().split("  α=")[0] for l in density] == [f"step {s}" for s in steps]
    evs = [store.sv(name)[list(store.steps).index(s)] ** 2 for s in steps]
    edges = np.geomspace(min(e.min() for e in evs), max(e.max() for e in evs) * (1 + 1e-9), 41)
    for line, ev in zip(density, evs):
        counts, _ = np.histogram(ev, bins=edges)
        centres = np.sqrt(edges[:-1] * edges[1:])
        np.testing.assert_allclose(line.get_xdata(), centres[counts > 0])
        np.testing.assert_allclose(line.get_ydata(), (counts / (len(ev) * np.diff(edges)))[counts > 0])
    labels = [line.get_label().split("  ")[1] for line in density]  # α in the legend, not beside the curves
    j = store.matrices.index(name)
    rows = [list(store.steps).index(s) for s in steps]
    assert labels == [f"α={a:.2f}" for a in store.metric("alpha")[rows, j]]
    check_figure(PLOTS["esd"]([store], matrix=name))  # labels in the figure, none overlapping (α did)
    with pytest.raises(SpecdynError, match="--checkpoints 0"):
        PLOTS["esd"]([store], matrix=name, checkpoints=0)


def test_alpha_in_metrics_and_compare(store):
    fig = PLOTS["metrics"]([store], metric="alpha", loss=False)
    ys = np.stack([l.get_ydata() for l in fig.axes[0].lines if len(l.get_ydata()) == len(store)])
    np.testing.assert_allclose(ys, store.metric("alpha").T)
    fig = PLOTS["compare"]([store, store], metric="alpha")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), np.nanmean(store.metric("alpha"), axis=1))
