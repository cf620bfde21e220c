"""Drawing pieces every figure kind shares: time heatmaps, thinned row labels, singular-value fans, families of
metric lines, loss curves on a twin axis, colour bars."""

import math

import matplotlib as mpl
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize

from specdyn.plots import style

LABEL_SPACING = 1.35  # a tick label's height, in font sizes, that keeps neighbours from touching


def heatmap(ax, axis: style.XAxis, x, data, *, cmap, vmin=0.0, vmax=1.0, first_row: int = 0):
    """data (rows, checkpoints) as cells centred on the checkpoints' x, row 0 at the top; NaN cells grey.
    Rows sit at first_row, first_row + 1, ... (0 for categorical rows, 1 for singular-value ranks)."""
    data = np.asarray(data, dtype=float)
    xe = axis.edges(x)
    ye = np.arange(data.shape[0] + 1) - 0.5 + first_row
    axis.apply(ax)
    mesh = ax.pcolormesh(
        xe, ye, np.ma.masked_invalid(data), cmap=cmap, norm=Normalize(vmin, vmax), shading="flat", rasterized=True
    )
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[-1], ye[0])
    ax.spines[["top", "right"]].set_visible(True)
    return mesh


def row_labels(ax, labels: list[str], axes_height_in: float) -> None:
    """Label heatmap rows, keeping every n-th label so that none overlap: as many as the axes' height holds
    at the tick font size."""
    fs = mpl.rcParams["ytick.labelsize"]
    fs = fs if isinstance(fs, (int, float)) else mpl.font_manager.font_scalings.get(fs, 1.0) * mpl.rcParams["font.size"]
    fit = max(1, int(axes_height_in * 72 / (fs * LABEL_SPACING)))
    step = math.ceil(len(labels) / fit)
    idx = list(range(0, len(labels), step))
    ax.set_yticks(idx, [labels[i] for i in idx])
    ax.tick_params(axis="y", length=2)
    if step > 1:  # unlabelled rows still get a small tick, so rows can be counted
        ax.set_yticks(range(len(labels)), minor=True)
        ax.tick_params(axis="y", which="minor", length=1, width=0.5)


def rank_ticks(n: int) -> list[int]:
    """Integer rank ticks that start at 1 (the largest singular value), about five of them."""
    step = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if n / s <= 5), 1000)
    return [1] + [t for t in range(step, n + 1, step) if t > 1]


def rank_axis(ax, n: int) -> None:
    ax.set_yticks(rank_ticks(n))
    ax.set_ylabel("rank i (1 = largest σ)")


def colorbar(fig, mappable, axes, label: str, **kw):
    cb = fig.colorbar(
        mappable, ax=axes, label=label, shrink=kw.pop("shrink", 0.9), aspect=kw.pop("aspect", 30), pad=0.02, **kw
    )
    cb.outline.set_linewidth(0.5)
    return cb


def rank_colorbar(fig, lines, ax, n: int):
    """A slim colour bar beside a singular-value panel: rank 1 at the top, as the largest value is."""
    cb = colorbar(fig, lines, ax, "rank i", shrink=1.0, aspect=25)
    cb.set_ticks(rank_ticks(n))
    cb.ax.invert_yaxis()
    return cb


def sv_fan(ax, axis: style.XAxis, x, sv, *, normalize: bool = False):
    """One line per singular value (columns of sv), coloured by rank, largest darkest and drawn on top.
    Returns the LineCollection; segments are in reverse rank order (the last one is rank 1)."""
    sv = np.asarray(sv, dtype=float)
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            sv = sv / sv[:, :1]
    n = sv.shape[1]
    cm = style.cmap("sv")
    norm = Normalize(1, max(n, 2))
    order = np.arange(n)[::-1]
    segs = [np.column_stack([x, sv[:, i]]) for i in order]
    lc = LineCollection(segs, colors=cm(norm(order + 1)), linewidths=1.0 if n > 20 else 1.4)
    lc.set_array(order + 1.0)  # lets a colour bar show rank
    lc.set_cmap(cm)
    lc.set_norm(norm)
    axis.apply(ax)
    ax.add_collection(lc)
    finite = sv[np.isfinite(sv)]
    top = float(finite.max()) if finite.size else 1.0
    ax.set_xlim(x[0], x[-1]) if len(x) > 1 else ax.set_xlim(x[0] - 0.5, x[0] + 0.5)
    ax.set_ylim(0, top * 1.04 if top > 0 else 1)
    ax.set_ylabel("σᵢ / σ₁" if normalize else "singular value σᵢ")
    return lc


def lines(ax, axis: style.XAxis, x, ys, labels: list[str], *, legend_max: int = 8, depth_label="depth", kinds=None):
    """A family of lines (columns of ys): Okabe-Ito colours with a legend up to legend_max lines; beyond that,
    with `kinds` of at most legend_max kinds, one colour per kind (legend `kind (n)`, lighter = earlier in
    depth), else coloured by position (depth) and returned as a ScalarMappable for a colour bar."""
    ys = np.asarray(ys, dtype=float)
    axis.apply(ax)
    n = ys.shape[1]
    mappable = None
    if n <= legend_max:
        for j in range(n):
            ax.plot(x, ys[:, j], color=style.CATEGORICAL[j % len(style.CATEGORICAL)], label=labels[j])
    elif kinds is not None and len(set(kinds)) <= legend_max:
        order = list(dict.fromkeys(kinds))
        count = {k: kinds.count(k) for k in order}
        seen = dict.fromkeys(order, 0)
        for j, kind in enumerate(kinds):
            base = np.array(mpl.colors.to_rgb(style.CATEGORICAL[order.index(kind) % len(style.CATEGORICAL)]))
            shade = 0.55 * (1 - seen[kind] / max(count[kind] - 1, 1))  # first of a kind lightest, last full
            first = seen[kind] == 0
            seen[kind] += 1
            ax.plot(x, ys[:, j], color=base + (1 - base) * shade, lw=1.0,
                    label=f"{kind} ({count[kind]})" if first else "_" + labels[j])  # fmt: skip
    else:
        cm = style.cmap("depth")
        norm = Normalize(0, n - 1)
        for j in range(n):
            ax.plot(x, ys[:, j], color=cm(norm(j)), lw=1.0, label=labels[j])
        mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    ax.margins(x=0)
    return mappable


def loss_twin(ax, run, keys=("train_loss", "val_loss")):
    """The run's logged losses on a right-hand axis (log scale when they span decades); None without a log."""
    curves = [(k, *run.history(k)) for k in keys if run.log.has(k)]
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return None
    tw = ax.twinx()
    tw.spines["right"].set_visible(True)
    for key, hx, hy in curves:
        tw.plot(
            hx,
            hy,
            color="0.15" if key.startswith("train") else "0.55",
            lw=1.0,
            ls="-" if key.startswith("train") else "--",
            label=run.log.label(key, style.metric_label(key)),
            zorder=1,
        )
    log_y(tw, np.concatenate([c[2] for c in curves]))
    tw.set_ylabel("loss")
    return tw


def log_y(ax, values) -> bool:
    """Log y for positive data spanning more than two decades (losses near convergence), else linear."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if (
        len(v) > 1
        and v.min() > 0
        and np.log10(v.max() / v.min()) > style.LOG_DECADES
        and (np.asarray(values) >= 0).all()
    ):
        ax.set_yscale("log")
        return True
    return False


def log_axis(axis, lo: float, hi: float) -> None:
    """A log scale whose tick labels never collide: labels on whole decades when the data span two or more,
    else on 1, 2 and 5 times a power of ten; minor ticks stay unlabelled."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    if decades >= 2:
        step = max(1, int(np.ceil(decades / 6)))  # at most about six labels
        axis.set_major_locator(LogLocator(base=10.0**step))
    else:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    axis.set_minor_formatter(NullFormatter())


def legend_beside(ax, **kw):
    """A legend to the right of its panel, outside the data (constrained layout makes room for it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kw)


def note(ax, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def history_panel(ax, axis: style.XAxis, run, kind: str) -> bool:
    """Train and validation curves of `loss` or `err` from the run's log, labelled with their logged names when
    another library logged them; False (and a note) when not logged."""
    drawn = False
    ys = []
    for split, colour in (("train", style.TRAIN), ("val", style.VAL)):
        hx, hy = run.history(f"{split}_{kind}")
        if len(hx):
            default = "train" if split == "train" else "validation"
            ax.plot(hx, hy, color=colour, label=run.log.label(f"{split}_{kind}", default))
            ys.append(hy)
            drawn = True
    if not drawn:
        note(ax, f"no {'loss' if kind == 'loss' else 'error'} logged")
        return False
    axis.apply(ax)
    ax.margins(x=0)
    if kind == "loss":
        log_y(ax, np.concatenate(ys))
        ax.set_ylabel("loss")
    else:
        ax.set_ylabel("error rate")
        ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best")
    return True


def add_handles(legend: dict, *axes) -> dict:
    """Add each label's first handle among `axes` to `legend` (label -> handle), for one legend over many panels."""
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    return legend


def legend_below(fig, handles: dict) -> None:
    """One legend for the whole figure under its panels, with as many columns as its width holds."""
    if not handles:
        return
    longest = max(len(k) for k in handles)
    per = 0.45 + 0.6 * style.RC["legend.fontsize"] / 72 * longest
    ncols = max(1, min(len(handles), int(fig.get_figwidth() / per)))
    rows = math.ceil(len(handles) / ncols)
    # the legend gets its own room: the panels keep their height
    fig.set_figheight(fig.get_figheight() + 0.1 + rows * 1.5 * style.RC["legend.fontsize"] / 72)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=ncols)
