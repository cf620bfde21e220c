"""`rank-heatmap` (the paper's Fig. 3, bottom): a per-matrix metric as a heatmap, matrices by depth on y (first
at the top), checkpoints on x; one panel per store and one colour scale for all of them, fixed to [0, 1] for
normalized metrics so that runs and models compare."""

import numpy as np

from specdyn.plots import draw, select, style
from specdyn.store import METRICS


@style.styled
def plot(
    stores,
    *,
    metric: str | None = None,
    matrices: list[str] | None = None,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    metric = select.check_metric(select.single(metric, "--metric", "rank-heatmap") or "effective_rank", METRICS)
    runs, axis = select.prepare(stores, steps, x, log_x)
    chosen = [select.matrices(r, matrices) for r in runs]
    data = [r.metric(metric)[:, [r.store.matrices.index(n) for n in names]].T for r, names in zip(runs, chosen)]
    if metric in style.UNIT_METRICS:
        vmin, vmax, cm = 0.0, 1.0, style.cmap("rank")
    else:  # unbounded (norms): one scale shared by every panel
        finite = np.concatenate([d[np.isfinite(d)] for d in data])
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cm = style.cmap("norm")
    select.check_panels(len(runs), "rank-heatmap")
    nrows, ncols = style.grid(len(runs))
    height = style.heatmap_height(max(len(c) for c in chosen))
    same_rows = all(c == chosen[0] for c in chosen)
    labels = [style.shorten_names(names) for names in chosen]
    label_w = max(style.label_width(lab) for lab in labels)
    fig = style.figure(
        nrows, ncols, panel_h=height, extra_w=0.8 + label_w * (nrows if same_rows else len(runs)) / nrows
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (ax, run, lab, d) in enumerate(zip(axes, runs, labels, data)):
        mesh = draw.heatmap(ax, axis, run.x, d, cmap=cm, vmin=vmin, vmax=vmax)
        if same_rows and i % ncols:
            ax.set_yticks([])
        else:
            draw.row_labels(ax, lab, height - 0.75)
            ax.set_ylabel("matrix (by depth)")
        ax.set_title(run.label)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    draw.colorbar(fig, mesh, axes[: len(runs)].tolist(), style.metric_label(metric))
    if title:
        fig.suptitle(title)
    return fig
