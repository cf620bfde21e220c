"""`stability`: how far each singular direction still is from where training ends. Left, the SVA diagonal of
one matrix against the final checkpoint, |<u_i(t), u_i(T)><v_i(t), v_i(T)>| (rank x checkpoint; docs/method.md 1.5);
right, the stability score (mean of the top-10 diagonal, docs/method.md 1.7) of every matrix over time. One row
per store, one [0, 1] colour scale."""

from specdyn.plots import draw, select, style

MAX_RANKS = 100  # the paper plots the first 100 ranks


def rank_rows(store, name: str, top: int | None) -> int:
    return min(store.top, store.matrix_spec(name).k, top or MAX_RANKS)


@style.styled
def plot(
    stores,
    *,
    matrix: str | None = None,
    matrices: list[str] | None = None,
    top: int | None = None,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    select.check_top(top)
    matrix = select.single(matrix, "--matrix", "stability")
    runs, axis = select.prepare(stores, steps, x, log_x)
    select.check_panels(2 * len(runs), "stability")
    picks = [(select.one_matrix(r, matrix), select.matrices(r, matrices)) for r in runs]
    height = style.heatmap_height(max(len(names) for _, names in picks))
    label_w = max(style.label_width(style.shorten_names(names)) for _, names in picks)
    fig = style.figure(len(runs), 2, panel_h=height, extra_w=1.0 + label_w)
    axes = fig.subplots(len(runs), 2, squeeze=False)
    cm = style.cmap("stability")
    for (left, right), run, (name, names) in zip(axes, runs, picks):
        st = run.store
        short = dict(zip(st.matrices, style.shorten_names(st.matrices)))
        n = rank_rows(st, name, top)
        diag = st.stability(name)[run.rows][:, :n].T
        mesh = draw.heatmap(left, axis, run.x, diag, cmap=cm, first_row=1)
        draw.rank_axis(left, n)
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        left.set_title(f"{prefix}{short[name]}: SVA vs step {int(st.steps[-1])}")
        idx = [st.matrices.index(m) for m in names]
        score = run.metric("stability_score")[:, idx].T
        draw.heatmap(right, axis, run.x, score, cmap=cm)
        draw.row_labels(right, [short[m] for m in names], height - 0.75)
        right.set_ylabel("matrix (by depth)")
        right.set_title(f"{prefix}stability score (top-10 mean)")
    draw.colorbar(fig, mesh, axes.ravel().tolist(), "|⟨uᵢ(t),uᵢ(T)⟩⟨vᵢ(t),vᵢ(T)⟩|, T final")
    if title:
        fig.suptitle(title)
    return fig
