"""`alignment` (the paper's Fig. 5): neighbouring-layer alignment. Left, the alignment diagonal
|<v_i(next), u_i(prev)>| of one pair over time (rank x checkpoint; docs/method.md 1.6); right, the alignment score
(top-10 mean) of every pair over time. One row per store, one [0, 1] colour scale."""

import numpy as np

from specdyn.plots import draw, select, style

MAX_RANKS = 100


def diag_ranks(diag: np.ndarray, top: int | None) -> int:
    """Ranks holding data (the stored diagonal is NaN-padded past the pair's k), at most top (100)."""
    has = np.flatnonzero(np.isfinite(diag).any(axis=0))
    n = int(has[-1]) + 1 if len(has) else diag.shape[1]
    return max(1, min(n, top or MAX_RANKS))


@style.styled
def plot(
    stores,
    *,
    pair: str | None = None,
    pairs: list[str] | None = None,
    top: int | None = None,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    select.check_top(top)
    pair = select.single(pair, "--pair", "alignment")
    runs, axis = select.prepare(stores, steps, x, log_x)
    select.check_panels(2 * len(runs), "alignment")
    picks = [(select.one_pair(r, pair), select.pairs(r, pairs)) for r in runs]
    height = style.heatmap_height(max(len(names) for _, names in picks))
    label_w = max(style.label_width(style.shorten_pairs(select.pair_specs(r.store), r.store.matrices)) for r in runs)
    fig = style.figure(len(runs), 2, panel_h=height, extra_w=1.0 + label_w)
    axes = fig.subplots(len(runs), 2, squeeze=False)
    cm = style.cmap("alignment")
    for (left, right), run, (name, names) in zip(axes, runs, picks):
        st = run.store
        specs = select.pair_specs(st)
        all_names = [p["name"] for p in specs]
        short = dict(zip(all_names, style.shorten_pairs(specs, st.matrices)))
        full = st.alignment(name)[run.rows]
        n = diag_ranks(full, top)
        mesh = draw.heatmap(left, axis, run.x, full[:, :n].T, cmap=cm, first_row=1)
        draw.rank_axis(left, n)
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        left.set_title(f"{prefix}{short[name]}")
        idx = [all_names.index(p) for p in names]
        score = st.alignment_score()[run.rows][:, idx].T
        draw.heatmap(right, axis, run.x, score, cmap=cm)
        draw.row_labels(right, [short[p] for p in names], height - 0.75)
        right.set_ylabel("layer pair (by depth)")
        right.set_title(f"{prefix}alignment score (top-10 mean)")
    draw.colorbar(fig, mesh, axes.ravel().tolist(), "alignment |⟨vᵢ(next), uᵢ(prev)⟩|")
    if title:
        fig.suptitle(title)
    return fig
