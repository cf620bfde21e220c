"""`grokking` (a row of the paper's Fig. 2): one row per store with the train/validation loss and error from
the run's training log (run.json, trainer_state.json, metrics.csv, TensorBoard), the singular values of one matrix, the effective rank of every matrix, and the alignment diagonal of
one pair, all on the same x axis, so a delayed jump in validation can be read against the spectra."""

from specdyn.plots import alignment, draw, select, style
from specdyn.plots.sv import chosen_matrices

PANEL_W, PANEL_H = 2.75, 2.3


@style.styled
def plot(
    stores,
    *,
    matrix: str | None = None,
    pair: str | None = None,
    matrices: list[str] | None = None,
    top: int | None = None,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    select.check_top(top)
    matrix = select.single(matrix, "--matrix", "grokking")
    pair = select.single(pair, "--pair", "grokking")
    runs, axis = select.prepare(stores, steps, x, log_x)
    has_loss = any(r.log.has("train_loss") or r.log.has("val_loss") for r in runs)
    has_err = any(r.log.has("train_err") or r.log.has("val_err") for r in runs)
    has_pairs = any(select.pair_specs(r.store) for r in runs)
    cols = (
        (["loss"] if has_loss else [])
        + (["err"] if has_err else [])
        + ["sv", "erank"]
        + (["align"] if has_pairs else [])
    )
    select.check_panels(len(cols) * len(runs), "grokking")
    fig = style.figure(len(runs), len(cols), PANEL_W, PANEL_H, extra_w=0.5)
    axes = fig.subplots(len(runs), len(cols), squeeze=False)
    legend = {}
    for row, run in zip(axes, runs):
        st = run.store
        short = dict(zip(st.matrices, style.shorten_names(st.matrices)))
        panel = dict(zip(cols, row))
        if "loss" in panel:
            draw.history_panel(panel["loss"], axis, run, "loss")
            panel["loss"].set_title("loss")
        if "err" in panel:
            draw.history_panel(panel["err"], axis, run, "err")
            panel["err"].set_title("error")
        name = chosen_matrices(run, [matrix] if matrix else None, None)[0]
        s = st.sv(name)[run.rows]
        lc = draw.sv_fan(panel["sv"], axis, run.x, s[:, :top] if top else s)
        panel["sv"].set_title(f"σ of {short[name]}")
        draw.rank_colorbar(fig, lc, panel["sv"], lc.get_array().size)
        names = select.matrices(run, matrices)
        ys = run.metric("effective_rank")[:, [st.matrices.index(n) for n in names]]
        kinds = [st.matrix_spec(n).kind for n in names]
        depth = draw.lines(panel["erank"], axis, run.x, ys, [short[n] for n in names], kinds=kinds)
        panel["erank"].set_ylabel("normalized effective rank")
        panel["erank"].set_title("effective rank")
        if depth is not None:
            draw.colorbar(fig, depth, panel["erank"], "matrix depth", shrink=1.0, aspect=25)
        elif run is runs[0]:  # under the figure: inside the panel it covered the lines
            legend = dict(zip(*reversed(panel["erank"].get_legend_handles_labels())))
        if "align" in panel:
            align_panel(fig, panel["align"], axis, run, pair, top)
        if len(runs) > 1:  # which run a row shows, on its first panel
            row[0].set_title(f"{run.label}: {row[0].get_title()}")
    draw.legend_below(fig, {f"effective rank: {k}": h for k, h in legend.items()})
    if title:
        fig.suptitle(title)
    return fig


def align_panel(fig, ax, axis, run, pair, top) -> None:
    """The alignment diagonal of one pair (rank x checkpoint), or a note for a store without pairs."""
    st = run.store
    specs = select.pair_specs(st)
    if not specs:
        draw.note(ax, "no alignment pairs")
        return
    p = select.one_pair(run, pair)
    full = st.alignment(p)[run.rows]
    n = alignment.diag_ranks(full, top)
    mesh = draw.heatmap(ax, axis, run.x, full[:, :n].T, cmap=style.cmap("alignment"), first_row=1)
    draw.rank_axis(ax, n)
    labels = dict(zip([q["name"] for q in specs], style.shorten_pairs(specs, st.matrices)))
    ax.set_title(f"alignment {labels[p]}", fontsize=8)
    draw.colorbar(fig, mesh, ax, "|⟨vᵢ(next), uᵢ(prev)⟩|", shrink=1.0, aspect=25)
