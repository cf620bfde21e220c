"""`sv` (the paper's Fig. 1 and Fig. 3, top): the singular values of one matrix over training, one line per
singular value, coloured by rank (rank 1, the largest, darkest). One panel per (store, matrix)."""

import numpy as np

from specdyn.plots import draw, select, style


def _as_list(v) -> list[str] | None:
    if v is None or isinstance(v, list):
        return v
    return [v]


def chosen_matrices(run, matrix, matrices) -> list[str]:
    """`--matrix NAME` (repeatable) first, else every match of `--matrices GLOB`, else the default matrix."""
    if matrix:
        return [select.one_matrix(run, m) for m in matrix]
    if matrices:
        return select.matrices(run, matrices)
    return [select.default_matrix(run.store)]


@style.styled
def plot(
    stores,
    *,
    matrix: list[str] | str | None = None,
    matrices: list[str] | None = None,
    top: int | None = None,
    normalize: bool = False,
    log_y: bool = False,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    select.check_top(top)
    runs, axis = select.prepare(stores, steps, x, log_x)
    matrix = _as_list(matrix)
    panels = [(run, name) for run in runs for name in chosen_matrices(run, matrix, matrices)]
    select.check_panels(len(panels), "sv")
    per_run = max(1, len(panels) // len(runs))
    ncols = min(per_run if len(runs) > 1 else len(panels), style.MAX_COLS)
    nrows = -(-len(panels) // ncols)
    fig = style.figure(nrows, ncols, panel_w=style.PANEL_W + 0.35)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (run, name) in zip(axes, panels):
        s = run.store.sv(name)[run.rows]
        s = s[:, :top] if top else s
        lc = draw.sv_fan(ax, axis, run.x, s, normalize=normalize)
        if log_y:
            with np.errstate(invalid="ignore", divide="ignore"):
                shown = s / s[:, :1] if normalize else s
            pos = shown[np.isfinite(shown) & (shown > 0)]
            ax.set_yscale("log")
            if pos.size:
                ax.set_ylim(pos.min() * 0.8, pos.max() * 1.25)
        short = dict(zip(run.store.matrices, style.shorten_names(run.store.matrices)))[name]
        ax.set_title(short if len(runs) == 1 else f"{run.label}: {short}")
        draw.rank_colorbar(fig, lc, ax, s.shape[1])
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
