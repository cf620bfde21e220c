"""`specdyn plot`: every kind draws exactly the store's values (read back from the returned Figure's artists),
the files are valid images, labels never overlap on a 60-matrix model, errors are one line, and two golden
figures still look the same."""

import json
import os
import xml.etree.ElementTree as ET

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, QuadMesh
from typer.testing import CliRunner

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.plots import PLOTS, style
from specdyn.plots.registry import KINDS
from specdyn.plots.runlog import read_run_log, run_labels
from tests.series import write_series
from tests.synthetic_store import grokking_log, transformer_shapes, write_store

runner = CliRunner()
STEPS = (0, 1, 3, 10, 30, 100, 300, 1000)
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def history(steps, wd):
    return [
        {
            "step": s,
            "train_loss": 3 / (1 + s / 50) + wd,
            "val_loss": 3.5 / (1 + s / 400),
            "train_err": 0.9 / (1 + s / 30),
            "val_err": 0.95 / (1 + s / 500),
        }
        for s in range(0, steps[-1] + 1, 50)
    ]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two analyzed runs of the tiny test model (embedding, fused attention, conv, linears) with run.json logs
    that differ in weight decay."""
    base = tmp_path_factory.mktemp("plots")
    out = []
    for seed, wd in ((0, 1.0), (1, 0.0)):
        run = base / f"run-wd{wd:g}"
        write_series(run, steps=STEPS, seed=seed)
        (run / "run.json").write_text(
            json.dumps(
                {
                    "task": "toy",
                    "config": {"weight_decay": wd, "lr": 1e-3, "out_dir": str(run)},
                    "history": history(STEPS, wd),
                }
            )
        )
        analyze([run], None, AnalyzeOptions(svd_route="gram"), show_progress=False)
        out.append(specdyn.open_store(run / "specdyn.zarr"))
    return out


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 62-matrix transformer-shaped store (small matrices, few checkpoints): for label layout."""
    path = tmp_path_factory.mktemp("wide") / "wide" / "specdyn.zarr"
    return specdyn.open_store(write_store(path, transformer_shapes(15, d=8, vocab=10), [0, 10, 100, 1000], top=8))


def panels(fig):
    """The figure's visible plot axes (no colour bars), in creation order."""
    return [ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")]


def only(fig, cls=QuadMesh):
    """The artists of a class in each plot axes, in axes order."""
    return [[c for c in ax.collections if isinstance(c, cls)] for ax in panels(fig)]


def mesh_data(ax):
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return np.ma.filled(mesh.get_array().astype(float), np.nan), mesh


def assert_same(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-6, equal_nan=True)


# ------------------------------------------------------------------------------------------- registry and style


def test_every_registered_kind_imports_a_plot_function_lazily():
    import subprocess
    import sys

    assert tuple(PLOTS) == KINDS and len(PLOTS) == len(KINDS)
    assert all(callable(PLOTS[k]) for k in KINDS)
    # listing the kinds (what `specdyn plot --help` does) must not import matplotlib
    code = "import sys; from specdyn.plots.registry import KINDS; assert 'matplotlib' not in sys.modules, 1"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shorten_names():
    names = [f"model.layers.{i}.self_attn.in_proj_weight" for i in range(12)] + [
        "model.embed.weight",
        "model.decoder.weight",
    ]
    short = style.shorten_names(names)
    assert short[11] == "11.self_attn.in_proj" and short[-2] == "embed" and short[-1] == "decoder"
    assert style.shorten_names(["layers.11.attn.in_proj_weight", "layers.2.fc.weight"]) == ["11.attn.in_proj", "2.fc"]
    # names that would collide keep more of themselves
    assert len(set(style.shorten_names(["a.weight", "a_weight", "a"]))) == 3
    assert len(set(style.shorten_names(["blocks.1.x.weight", "layers.1.x.weight"]))) == 2
    # very long names lose their middle, and stay distinct
    long = [
        f"encoder.stage_{i}.very_long_module_name_for_testing.projection_{j}.weight" for i in range(3) for j in range(3)
    ]
    short = style.shorten_names(long)
    assert len(set(short)) == len(long) and all(len(s) <= style.LABEL_MAX_CHARS for s in short)
    assert style.shorten_names(["model.fc.weight"]) == ["model.fc"]
    pairs = [
        {"prev": names[0], "next": names[0], "kind": "qk"},
        {"prev": "model.layers.0.attn.in_proj_weight", "next": "model.layers.0.attn.out_proj.weight", "kind": "vo"},
    ]
    labels = style.shorten_pairs(
        pairs, [names[0], pairs[1]["prev"], pairs[1]["next"], "model.layers.1.attn.in_proj_weight"]
    )
    assert labels == ["0.self_attn.in_proj (qk)", "0.attn.in_proj → out_proj"]


def test_log_x_decision_and_edges():
    assert style.use_log_x([np.array([0, 10, 100, 1000, 10000])], "step", "auto")
    assert not style.use_log_x([np.array([0, 100, 200, 300])], "step", "auto")
    assert not style.use_log_x([np.array([0, 10, 10000])], "index", "on")
    assert not style.use_log_x([np.array([1, 10000])], "step", "off")
    assert style.use_log_x([np.array([0, 10, 20])], "step", "on")
    axis = style.XAxis.build([np.array([0, 1, 10, 100, 1000])])
    assert axis.log and axis.linthresh == 1
    x = np.array([0, 1, 10, 100, 1000.0])
    e = axis.edges(x)
    assert len(e) == 6 and np.all(np.diff(e) > 0) and e[0] == 0 and np.all((e[:-1] <= x) & (x < e[1:]))
    lin = style.XAxis.build([np.array([0, 10, 30])], "step", "off")
    assert_same(lin.edges(np.array([0, 10, 30.0])), [0, 5, 20, 40])  # never before step 0
    assert_same(lin.edges(np.array([10, 20, 40.0])), [5, 15, 30, 50])
    with pytest.raises(SpecdynError):
        style.XAxis.build([x], "epoch")


def test_heatmap_cells_grey_where_nan():
    from matplotlib.figure import Figure

    from specdyn.plots import draw

    ax = Figure().subplots()
    data = np.array([[0.1, np.nan, 0.3], [0.4, 0.5, 0.6]])
    mesh = draw.heatmap(ax, style.XAxis("step"), np.array([0, 10, 20]), data, cmap=style.cmap("rank"))
    arr = mesh.get_array()
    assert arr.mask.tolist() == [[False, True, False], [False, False, False]]
    assert mesh.cmap.get_bad().tolist() == list(matplotlib.colors.to_rgba(style.BAD))


def test_single_checkpoint_store(tmp_path):
    st = specdyn.open_store(
        write_store(tmp_path / "one" / "specdyn.zarr", transformer_shapes(1, d=4, vocab=6), [0], top=4)
    )
    for kind in ("rank-heatmap", "sv", "stability", "alignment", "metrics", "grokking", "compare"):
        fig = PLOTS[kind]([st])
        style.save(fig, tmp_path / f"{kind}.png", dpi=30)
    data, _ = mesh_data(PLOTS["rank-heatmap"]([st]).axes[0])
    assert_same(data, st.metric("effective_rank").T)


# ------------------------------------------------------------------------------------------- data equal the store's


def test_rank_heatmap_draws_the_metric(stores):
    st = stores[0]
    fig = PLOTS["rank-heatmap"]([st])
    data, mesh = mesh_data(fig.axes[0])
    assert_same(data, st.metric("effective_rank").T)
    assert mesh.norm.vmin == 0 and mesh.norm.vmax == 1
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == style.shorten_names(st.matrices)
    # a subset of matrices and checkpoints, another metric, two stores on one fixed scale
    fig = PLOTS["rank-heatmap"](stores, metric="stable_rank", matrices=["*fc*", "out.weight"], steps="3:300")
    rows = [st.matrices.index("fc.weight"), st.matrices.index("out.weight")]
    sel = (st.steps >= 3) & (st.steps <= 300)
    for ax, s in zip(fig.axes[:2], stores):
        data, mesh = mesh_data(ax)
        assert_same(data, s.metric("stable_rank")[sel][:, rows].T)
        assert (mesh.norm.vmin, mesh.norm.vmax) == (0, 1)
    # unbounded metrics share one scale across stores
    fig = PLOTS["rank-heatmap"](stores, metric="spectral_norm")
    both = np.concatenate([s.metric("spectral_norm").ravel() for s in stores])
    for ax in fig.axes[:2]:
        _, mesh = mesh_data(ax)
        assert mesh.norm.vmin == pytest.approx(both.min()) and mesh.norm.vmax == pytest.approx(both.max())


def test_sv_draws_every_singular_value(stores):
    st = stores[0]
    fig = PLOTS["sv"]([st], matrix="fc.weight")
    (lc,) = only(fig, LineCollection)[0]
    segs = lc.get_segments()[::-1]  # drawn smallest first, so rank 1 ends on top
    s = st.sv("fc.weight")
    assert len(segs) == s.shape[1]
    for i, seg in enumerate(segs):
        assert_same(seg[:, 0], st.steps)
        assert_same(seg[:, 1], s[:, i])
    fig = PLOTS["sv"]([st], matrix=["fc.weight", "conv.weight"], top=3, normalize=True, x="index", log_y=True)
    fans = only(fig, LineCollection)
    assert len(fans) == 2
    for (lc,), name in zip(fans, ["fc.weight", "conv.weight"]):
        segs = lc.get_segments()[::-1]
        s = st.sv(name)
        assert len(segs) == 3
        assert_same(segs[0][:, 0], np.arange(len(st)))
        assert_same([seg[:, 1] for seg in segs], (s[:, :3] / s[:, :1]).T)
    # the default matrix is the first attention in-projection
    fig = PLOTS["sv"]([st])
    assert "attn.in_proj" in fig.axes[0].get_title()


def test_stability_draws_diagonal_and_scores(stores):
    st = stores[0]
    fig = PLOTS["stability"]([st], matrix="conv.weight", steps=":300")
    sel = st.steps <= 300
    left, _ = mesh_data(fig.axes[0])
    k = st.matrix_spec("conv.weight").k
    assert_same(left, st.stability("conv.weight")[sel][:, :k].T)
    right, mesh = mesh_data(fig.axes[1])
    assert_same(right, st.metric("stability_score")[sel].T)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0, 1)


def test_alignment_draws_diagonal_and_scores(stores):
    st = stores[0]
    pair = st.pairs[2]
    fig = PLOTS["alignment"]([st], pair=pair, top=4)
    left, _ = mesh_data(fig.axes[0])
    assert_same(left, st.alignment(pair)[:, :4].T)
    right, _ = mesh_data(fig.axes[1])
    assert_same(right, st.alignment_score().T)
    fig = PLOTS["alignment"]([st])  # default: embedding -> attention
    assert fig.axes[0].get_title() == "embed → attn.in_proj"


def test_metrics_lines_and_logged_loss(stores):
    st = stores[0]
    fig = PLOTS["metrics"]([st], metric=["effective_rank", "count90"], matrices=["*attn*"])
    names = [n for n in st.matrices if "attn" in n]
    main = [ax for ax in fig.axes if ax.get_ylabel() in ("normalized effective rank", style.metric_label("count90"))]
    assert len(main) == 2
    for ax, m in zip(main, ["effective_rank", "count90"]):
        assert [l.get_label() for l in ax.lines] == ["attn.in_proj", "attn.out_proj"]
        for line, n in zip(ax.lines, names):
            assert_same(line.get_ydata(), st.metric(m)[:, st.matrices.index(n)])
    twins = [ax for ax in fig.axes if ax.get_ylabel() == "loss"]
    assert len(twins) == 2
    log = read_run_log(st)
    assert_same(twins[0].lines[0].get_xdata(), log.history["step"])
    assert_same(twins[0].lines[0].get_ydata(), log.history["train_loss"])
    assert_same(twins[0].lines[1].get_ydata(), log.history["val_loss"])
    fig = PLOTS["metrics"]([st], loss=False, metric="alignment_score")
    assert not [ax for ax in fig.axes if ax.get_ylabel() == "loss"]
    assert_same([l.get_ydata() for l in fig.axes[0].lines], st.alignment_score().T)


def test_metrics_index_axis_maps_logged_steps(stores):
    st = stores[0]
    fig = PLOTS["metrics"]([st], x="index")
    (twin,) = [ax for ax in fig.axes if ax.get_ylabel() == "loss"]
    log = read_run_log(st)
    assert_same(twin.lines[0].get_xdata(), np.interp(log.history["step"], st.steps, np.arange(len(st))))
    assert fig.axes[0].get_xlabel() == "checkpoint index" and fig.axes[0].get_xscale() == "linear"


def test_grokking_row_per_store(stores):
    fig = PLOTS["grokking"](stores, matrix="fc.weight")
    titled = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    for st, label in zip(stores, run_labels(stores, [read_run_log(s) for s in stores])):
        log = read_run_log(st)
        loss = titled[f"{label}: loss"]
        assert_same(loss.lines[0].get_ydata(), log.history["train_loss"])
        assert_same(loss.lines[1].get_ydata(), log.history["val_loss"])
    err = [ax for ax in fig.axes if ax.get_title() == "error"]
    assert len(err) == 2
    log = read_run_log(stores[0])
    assert_same(err[0].lines[0].get_ydata(), log.history["train_err"])
    assert_same(err[0].lines[1].get_ydata(), log.history["val_err"])
    sv_axes = [ax for ax in fig.axes if ax.get_title() == "σ of fc"]
    assert len(sv_axes) == 2
    segs = [c for c in sv_axes[1].collections if isinstance(c, LineCollection)][0].get_segments()[::-1]
    assert_same(segs[0][:, 1], stores[1].sv("fc.weight")[:, 0])
    erank = [ax for ax in fig.axes if ax.get_title() == "effective rank"]
    assert_same([l.get_ydata() for l in erank[0].lines], stores[0].metric("effective_rank").T)
    align = [ax for ax in fig.axes if ax.get_title().startswith("alignment")]
    data, _ = mesh_data(align[0])
    pair = stores[0].pairs[0]
    assert_same(data, stores[0].alignment(pair)[:, : data.shape[0]].T)


def test_compare_means_and_config_legend(stores):
    fig = PLOTS["compare"](stores, metric=["effective_rank", "val_loss"])
    mean_ax, loss_ax = fig.axes[0], fig.axes[1]
    for line, st in zip(mean_ax.lines, stores):
        assert_same(line.get_ydata(), st.metric("effective_rank").mean(axis=1))
    assert [l.get_label() for l in mean_ax.lines] == [
        "weight_decay=1",
        "weight_decay=0",
    ]  # out_dir differs too, ignored
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["weight_decay=1", "weight_decay=0"]
    for line, st in zip(loss_ax.lines, stores):
        assert_same(line.get_ydata(), read_run_log(st).history["val_loss"])
    fig = PLOTS["compare"](stores, metric="stability_score", per_matrix=True, matrices=["fc.weight", "out.weight"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["fc", "out"]
    for line, st in zip(fig.axes[1].lines, stores):
        assert_same(line.get_ydata(), st.metric("stability_score")[:, st.matrices.index("out.weight")])
    with pytest.raises(SpecdynError, match="per-matrix"):
        PLOTS["compare"](stores, metric="val_loss", per_matrix=True)


def test_prune_and_interp_say_what_to_run(stores):
    with pytest.raises(SpecdynError, match=r"no prune-eval results; run `specdyn prune-eval RUN_DIR` first"):
        PLOTS["prune"](stores[:1])
    with pytest.raises(SpecdynError, match=r"no interpolation results; run `specdyn interpolate"):
        PLOTS["interp"](stores[:1])


# ------------------------------------------------------------------------------------------- layout


def tick_boxes(fig, ax):
    FigureCanvasAgg(fig)
    r = fig.canvas.get_renderer()
    fig.draw(r)
    return [t.get_window_extent(r) for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("kind", ["rank-heatmap", "stability", "alignment"])
def test_labels_never_overlap_on_a_large_model(wide, kind):
    n_rows = len(wide.matrices) if kind != "alignment" else len(wide.pairs)
    assert n_rows > 60
    fig = PLOTS[kind]([wide])
    ax = fig.axes[0] if kind == "rank-heatmap" else fig.axes[1]
    boxes = tick_boxes(fig, ax)
    assert 10 < len(boxes) < n_rows  # thinned, not dropped
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b)
    texts = [t.get_text() for t in ax.get_yticklabels()]
    assert len(set(texts)) == len(texts)
    # every label sits inside the figure
    fig_box = fig.bbox
    assert all(fig_box.x0 - 1 <= b.x0 and b.x1 <= fig_box.x1 + 1 for b in boxes)


@pytest.mark.parametrize(
    "kind", ["rank-heatmap", "sv", "stability", "alignment", "metrics", "grokking", "compare", "esd"]
)
def test_labels_inside_and_apart_and_legends_off_the_data(stores, kind):
    from tests.figure_checks import check_figure

    for chosen in (stores[:1], stores):
        check_figure(PLOTS[kind](chosen))


def test_many_matrices_are_named_by_kind(wide):
    from tests.figure_checks import check_figure

    fig = PLOTS["metrics"]([wide], loss=False)
    kinds = [wide.matrix_spec(n).kind for n in wide.matrices]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{k} ({kinds.count(k)})" for k in dict.fromkeys(kinds)]  # not a depth colour bar alone
    colours = {}
    for line, kind in zip(fig.axes[0].lines, kinds):
        colours.setdefault(kind, set()).add(tuple(np.round(line.get_color(), 3)))
    assert len(fig.axes) == 1  # no colour bar
    assert all(len(c) == kinds.count(k) for k, c in colours.items())  # shades tell a kind's matrices apart
    check_figure(fig)


# ------------------------------------------------------------------------------------------- the command


def test_cli_writes_png_svg_pdf(stores, tmp_path):
    run = stores[0].path.parent
    for suffix in ("png", "svg", "pdf"):
        out = tmp_path / f"fig.{suffix}"
        r = runner.invoke(app, ["plot", "rank-heatmap", str(run), "-o", str(out), "--dpi", "50", "--json"])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == {"written": [str(out)]}
        head = out.read_bytes()[:8]
        if suffix == "png":
            img = matplotlib.image.imread(out)
            assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
        elif suffix == "svg":
            assert ET.parse(out).getroot().tag.endswith("svg")
        else:
            assert head.startswith(b"%PDF")
    r = runner.invoke(
        app,
        [
            "plot",
            "compare",
            *[str(s.path) for s in stores],
            "-o",
            str(tmp_path / "c.png"),
            "--metric",
            "val_loss",
            "--metric",
            "effective_rank",
            "--dpi",
            "50",
            "--title",
            "wd",
        ],
    )
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["plot", "sv", "{missing}", "-o", "{out}"], 6, "no specdyn store"),
        (["plot", "sv", "{run}", "-o", "{out}", "--matrix", "fc.weigth"], 1, "did you mean 'fc.weight'"),
        (["plot", "sv", "{run}", "-o", "{out}", "--matrices", "nope*"], 1, "no matrix matches 'nope*'"),
        (
            ["plot", "rank-heatmapp", "{run}", "-o", "{out}"],
            2,
            "unknown plot kind 'rank-heatmapp'; did you mean rank-heatmap",
        ),
        (["plot", "rank-heatmap", "{run}", "-o", "{out}", "--metric", "erank"], 2, "unknown metric 'erank'"),
        (["plot", "rank-heatmap", "{run}", "-o", "{out}", "--steps", "5000:"], 1, "selects none of its 8 checkpoints"),
        (["plot", "rank-heatmap", "{run}", "-o", "{out}", "--steps", "x:y"], 2, "--steps"),
        (["plot", "rank-heatmap", "{run}", "-o", "{out}", "--pair", "a"], 2, "--pair does not apply to `rank-heatmap`"),
        (
            ["plot", "stability", "{run}", "-o", "{out}", "--matrix", "fc.weight", "--matrix", "out.weight"],
            2,
            "shows one",
        ),
        (["plot", "alignment", "{run}", "-o", "{out}", "--pair", "fc -> nothing"], 1, "no pair"),
        (["plot", "sv", "{run}", "-o", "{base}/fig.jpg"], 2, "use .png, .svg or .pdf"),
        (["plot", "sv", "{run}", "-o", "{out}", "--x", "time"], 2, "--x 'time'"),
        (["plot", "sv", "{run}", "-o", "{out}", "--top", "0"], 2, "--top 0"),
        (["plot", "prune", "{run}", "-o", "{out}"], 1, "run `specdyn prune-eval RUN_DIR` first"),
    ],
)
def test_cli_errors_are_one_line(stores, tmp_path, args, code, needle):
    fill = {
        "missing": str(tmp_path / "nowhere"),
        "run": str(stores[0].path.parent),
        "out": str(tmp_path / "f.png"),
        "base": str(tmp_path),
    }
    r = runner.invoke(app, [a.format(**fill) for a in args])
    assert r.exit_code == code, r.stderr
    assert r.stderr.startswith("error:") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f.png").exists()


def test_unreadable_run_json_only_warns(tmp_path, stores):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(stores[0].path.parent, run)
    (run / "run.json").write_text("{not json")
    st = specdyn.open_store(run / "specdyn.zarr")
    with pytest.warns(UserWarning, match="unreadable training log"):
        fig = PLOTS["metrics"]([st])
    assert not [ax for ax in fig.axes if ax.get_ylabel() == "loss"]


def test_run_labels():
    class S:
        def __init__(self, path):
            self.path = path

    from pathlib import Path

    from specdyn.plots.runlog import RunLog

    a, b = S(Path("/x/runA/specdyn.zarr")), S(Path("/y/runA/specdyn.zarr"))
    assert run_labels([a, b]) == ["x/runA", "y/runA"]
    logs = [RunLog("mlp", {"random_labels": True, "lr": 1e-3}), RunLog("mlp", {"random_labels": False, "lr": 1e-3})]
    assert run_labels([a, b], logs) == ["random_labels=True", "random_labels=False"]
    assert run_labels([a, S(Path("/x/runB/specdyn.zarr"))], [RunLog(), RunLog()]) == ["runA", "runB"]


# ------------------------------------------------------------------------------------------- golden figures


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "golden-run" / "specdyn.zarr"
    steps = [0, 1, 3, 10, 30, 100, 300, 1000, 3000]
    return specdyn.open_store(
        write_store(path, transformer_shapes(2, d=8, vocab=10), steps, top=8, run_log=grokking_log(steps))
    )


@pytest.mark.parametrize("kind, options", [("rank-heatmap", {}), ("grokking", {})])
def test_golden_figures(golden_store, tmp_path, kind, options):
    """Tolerant image comparison against tests/golden/ (regenerate with SPECDYN_REGEN_GOLDEN=1 after a
    deliberate change of the look, and view the new files before committing them)."""
    from matplotlib.testing.compare import compare_images

    fig = PLOTS[kind]([golden_store], **options)
    expected = os.path.join(GOLDEN, f"{kind}.png")
    actual = tmp_path / f"{kind}.png"
    style.save(fig, actual, dpi=40)
    if os.environ.get("SPECDYN_REGEN_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        style.save(fig, expected, dpi=40)
    assert compare_images(expected, str(actual), tol=6) is None


# ------------------------------------------------------------------------------------------- the batch script


def test_batch_script_analyzes_and_plots_a_folder(tmp_path):
    """scripts/analyze_and_plot.sh on a tiny run and a folder without checkpoints: four CLI processes (analyze,
    plot, compare, report), ~15 s because each start imports torch."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    runs = tmp_path / "runs"
    write_series(runs / "run0", steps=(0, 10, 20))
    (runs / "notes").mkdir()
    env = {
        **os.environ,
        "SPECDYN": f"{sys.executable} -m specdyn",
        "KINDS": "rank-heatmap",
        "FORMAT": "png",
        "PYTHONPATH": str(root),
    }
    out = tmp_path / "figs"
    p = subprocess.run(
        ["bash", str(root / "scripts" / "analyze_and_plot.sh"), str(runs), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "skip" in p.stderr and "notes" in p.stderr
    for name in ("run0/rank-heatmap.png", "compare.png"):
        assert matplotlib.image.imread(out / name).shape[0] > 50
    assert (out / "report.html").read_text().count("<img") > 5
    assert (runs / "run0" / "specdyn.zarr" / "zarr.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    p = subprocess.run(
        ["bash", str(root / "scripts" / "analyze_and_plot.sh"), str(empty)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 3 and "no run with checkpoints" in p.stderr
