"""`lottery`: how far lottery-ticket masks move a matrix's singular vectors: the agreement (SVA score, docs/method.md
3) between SVD(W) and SVD(M⊙W) against the mask's density, for the global magnitude mask and for the random-mask
baseline with the same per-layer densities (mean over the masked matrices, band from the least to the most
agreeing matrix), and per matrix at the lowest density. Drawn from the `evals/lottery` group that
`specdyn lottery` writes; a store without it gets a one-line error saying which command to run first."""

from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.plots import draw, select, style

MISSING = "no lottery results; run `specdyn lottery RUN_DIR --density 0.05,0.1,0.2` first"
GROUP = "evals/lottery"
COLOURS = {"magnitude": "#0072B2", "random": "#D55E00"}
LABELS = {"magnitude": "magnitude mask", "random": "random mask (baseline)"}


def has_results(store) -> bool:
    return select.eval_group(store, "lottery")


def load(store) -> dict:
    """The stored arrays: density (D,), mask_type (2,), lottery_matrix (L,), sva_score (D, 2, L), and attrs."""
    from specdyn.store.results import read_group

    select.eval_group(store, "lottery", MISSING)
    got = read_group(Path(store.path), GROUP)
    if got is None:
        raise SpecdynError(f"{store.path}: {MISSING}")
    arrays, attrs = got
    return {**{k: v for k, (_, v) in arrays.items()}, "attrs": attrs}


@style.styled
def plot(stores, *, title: str | None = None):
    data = [load(st) for st in stores]
    n_matrices = max(len(r["lottery_matrix"]) for r in data)
    height = max(style.PANEL_H, style.heatmap_height(n_matrices))
    fig = style.figure(len(stores), 2, panel_h=height)
    axes = fig.subplots(len(stores), 2, squeeze=False)
    legend = {}
    for (ax_d, ax_m), st, r in zip(axes, stores, data):
        prefix = f"{Path(st.path).parent.name}: " if len(stores) > 1 else ""
        _by_density(ax_d, r)
        ax_d.set_title(f"{prefix}agreement vs density (step {r['attrs'].get('step')})")
        _by_matrix(ax_m, r, height)
        ax_m.set_title(f"{prefix}per matrix at density {float(r['density'][0]):g}")
        draw.add_handles(legend, ax_d)
    draw.legend_below(fig, legend)
    if title:
        fig.suptitle(title)
    return fig


def _by_density(ax, r) -> None:
    d = np.asarray(r["density"], dtype=float)
    types = [str(t) for t in r["mask_type"]]
    for t, mask in enumerate(types):
        scores = np.asarray(r["sva_score"][:, t, :], dtype=float)  # (density, matrix)
        mean = np.nanmean(scores, axis=1)
        ax.plot(d, mean, color=COLOURS.get(mask), marker="o", ms=3, label=LABELS.get(mask, mask),
                ls="-" if mask == "magnitude" else "--")  # fmt: skip
        if len(d) > 1:
            ax.fill_between(d, np.nanmin(scores, axis=1), np.nanmax(scores, axis=1), color=COLOURS.get(mask),
                            alpha=0.15, lw=0)  # fmt: skip
        else:
            ax.errorbar(d, mean, yerr=[mean - np.nanmin(scores, axis=1), np.nanmax(scores, axis=1) - mean],
                        color=COLOURS.get(mask), ls="none", capsize=3)  # fmt: skip
    if len(d) > 1 and d.max() / d.min() > 4:
        draw.log_axis(ax.xaxis, d.min(), d.max())
        if len(d) <= 6 and np.all(np.diff(np.log10(d)) > 0.25):  # few, spread out: label the densities run
            ax.set_xticks(d, [f"{v:g}" for v in d])
    elif len(d) == 1:
        ax.set_xlim(d[0] * 0.5, min(1.0, d[0] * 1.5))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_ylabel("SVA score of SVD(W) vs SVD(M⊙W)")


def _by_matrix(ax, r, panel_h: float) -> None:
    names = [str(n) for n in r["lottery_matrix"]]
    labels = style.shorten_names(names)
    types = [str(t) for t in r["mask_type"]]
    y = np.arange(len(names))
    height = 0.8 / max(len(types), 1)
    for t, mask in enumerate(types):
        ax.barh(y + (t - (len(types) - 1) / 2) * height, np.asarray(r["sva_score"][0, t, :], dtype=float),
                height=height, color=COLOURS.get(mask), label=LABELS.get(mask, mask))  # fmt: skip
    ax.set_ylim(len(names) - 0.5, -0.5)  # first matrix at the top, as the heatmaps
    draw.row_labels(ax, labels, panel_h * 0.75)  # the axes take about 3/4 of the panel
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("SVA score")
