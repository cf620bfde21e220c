"""`metrics`: line plots of any per-matrix metric (or the alignment score per pair) for chosen matrices, with
the run's train and validation loss from its training log (run.json, trainer_state.json, metrics.csv, TensorBoard) on a right-hand axis. Rows are metrics, columns stores."""

import numpy as np

from specdyn.plots import draw, select, style
from specdyn.store import METRICS

LINE_METRICS = METRICS + ("alignment_score",)


def series(run, metric: str, matrices, pairs) -> tuple[np.ndarray, list[str]]:
    """(checkpoint, line) values and line labels: one line per chosen matrix, or per pair for alignment_score."""
    st = run.store
    if metric == "alignment_score":
        specs = select.pair_specs(st)
        names = select.pairs(run, pairs)
        all_names = [p["name"] for p in specs]
        short = dict(zip(all_names, style.shorten_pairs(specs, st.matrices)))
        idx = [all_names.index(n) for n in names]
        return st.alignment_score()[run.rows][:, idx], [short[n] for n in names]
    names = select.matrices(run, matrices)
    short = dict(zip(st.matrices, style.shorten_names(st.matrices)))
    return run.metric(metric)[:, [st.matrices.index(n) for n in names]], [short[n] for n in names]


def kinds_of(run, metric: str, matrices) -> list[str] | None:
    """The matrix kind of each line (None for pair lines): many lines are told apart by kind."""
    if metric == "alignment_score":
        return None
    return [run.store.matrix_spec(n).kind for n in select.matrices(run, matrices)]


@style.styled
def plot(
    stores,
    *,
    metric: list[str] | str | None = None,
    matrices: list[str] | None = None,
    pairs: list[str] | None = None,
    loss: bool = True,
    log_y: bool = False,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    metric_list = [metric] if isinstance(metric, str) else list(metric or ["effective_rank"])
    for m in metric_list:
        select.check_metric(m, LINE_METRICS)
    runs, axis = select.prepare(stores, steps, x, log_x)
    select.check_panels(len(metric_list) * len(runs), "metrics")
    # rows are metrics and columns stores; one store lays its metrics side by side
    shape = (1, len(metric_list)) if len(runs) == 1 else (len(metric_list), len(runs))
    fig = style.figure(*shape, panel_w=style.PANEL_W + 0.3)
    axes = fig.subplots(*shape, squeeze=False)
    if len(runs) == 1:
        axes = axes.T
    legend, depth = {}, None
    for r, m in enumerate(metric_list):
        for c, run in enumerate(runs):
            ax = axes[r, c]
            ys, labels = series(run, m, matrices, pairs)
            mappable = draw.lines(ax, axis, run.x, ys, labels, kinds=kinds_of(run, m, matrices))
            depth = mappable or depth
            ax.set_ylabel(style.metric_label(m))
            if log_y:
                ax.set_yscale("log")
            if r == 0 and len(runs) > 1:
                ax.set_title(run.label)
            tw = draw.loss_twin(ax, run) if loss else None
            for a in (ax, tw) if tw else (ax,):
                if mappable is None or a is tw:
                    draw.add_handles(legend, a)
    draw.legend_below(fig, legend)
    if depth is not None:
        draw.colorbar(fig, depth, axes.ravel().tolist(), "matrix depth (0 = first)")
    if title:
        fig.suptitle(title)
    return fig
