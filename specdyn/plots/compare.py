"""`compare`: one metric for several stores on shared axes (weight decay on/off, random vs true labels), one
line per store, labelled from what differs in the runs' configs. A per-matrix metric is averaged over the
chosen matrices (band: ± one standard deviation across them) unless `per_matrix`, which gives one panel per
matrix; logged curves (train_loss, val_loss, train_err, val_err) compare as they are.

With `groups` (conditions of several seeds each), one line per condition instead: the mean over its seeds of
each seed's curve, band ± one standard deviation over seeds (ddof 0), steps aligned by value (docs/method.md §5).
"""

import warnings

import numpy as np

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.plots import draw, select, style
from specdyn.plots import groups as grouping
from specdyn.plots.metrics import LINE_METRICS, series
from specdyn.plots.runlog import HISTORY_KEYS
from specdyn.store import METRICS

COMPARE_METRICS = LINE_METRICS + HISTORY_KEYS


def pooled(run, metric: str, matrices, pairs) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation over the chosen matrices (pairs for alignment_score), and their count."""
    ys, _ = series(run, metric, matrices, pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a checkpoint where every value is NaN stays NaN
        return np.nanmean(ys, axis=1), np.nanstd(ys, axis=1), ys.shape[1]


@style.styled
def plot(
    stores,
    *,
    metric: list[str] | str | None = None,
    matrices: list[str] | None = None,
    pairs: list[str] | None = None,
    per_matrix: bool = False,
    log_y: bool = False,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
    groups: list | None = None,
    interpolate_steps: bool = False,
):
    metric_list = [metric] if isinstance(metric, str) else list(metric or ["effective_rank"])
    for m in metric_list:
        select.check_metric(m, COMPARE_METRICS)
    if groups:
        conditions = list(groups) + [grouping.Condition(None, [st]) for st in stores]
        stores = [st for c in conditions for st in c.stores]
    runs, axis = select.prepare(stores, steps, x, log_x)
    if groups:
        by_condition, k = [], 0
        for c in conditions:
            by_condition.append((c.name or runs[k].label, runs[k : k + len(c.stores)]))
            k += len(c.stores)
        colours = {name: style.CATEGORICAL[i % len(style.CATEGORICAL)] for i, (name, _) in enumerate(by_condition)}
    else:
        colours = {r.label: style.CATEGORICAL[i % len(style.CATEGORICAL)] for i, r in enumerate(runs)}
    panels, nrows, ncols = _panels(metric_list, runs[0], matrices, per_matrix)
    fig = style.figure(nrows, ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    short = dict(zip(runs[0].store.matrices, style.shorten_names(runs[0].store.matrices)))
    for ax, (m, name) in zip(axes, panels):
        axis.apply(ax)
        if groups:
            ys_all = _grouped_panel(ax, m, name, by_condition, colours, matrices, pairs, interpolate_steps)
        else:
            ys_all = _runs_panel(ax, m, name, runs, colours, matrices, pairs)
        if not ys_all:
            draw.note(ax, f"no {style.metric_label(m)} logged")
            continue
        ax.margins(x=0)
        what = "pairs" if m == "alignment_score" else "matrices"
        what = f"{what}; band: seeds" if groups else what
        ylabel = style.metric_label(m) + ("" if m in HISTORY_KEYS or name else f"\n(mean over {what})")
        ax.set_ylabel(ylabel)
        if name:
            ax.set_title(short.get(name, name))
        if log_y or (m.endswith("_loss") and draw.log_y(ax, np.concatenate(ys_all))):
            ax.set_yscale("log")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    draw.legend_below(fig, draw.add_handles({}, *axes))
    if title:
        fig.suptitle(title)
    return fig


def _panels(metric_list: list[str], run, matrices, per_matrix: bool):
    """(metric, matrix or None) per panel and the grid: one panel per metric, or per metric and matrix."""
    if not per_matrix:
        panels = [(m, None) for m in metric_list]
        return (panels, *style.grid(len(panels)))
    bad = [m for m in metric_list if m not in METRICS]
    if bad:
        raise SpecdynError(
            f"--per-matrix draws per-matrix metrics; {', '.join(bad)} is not one (drop --per-matrix)", code=EXIT_USAGE
        )
    names = select.matrices(run, matrices)
    panels = [(m, n) for m in metric_list for n in names]
    select.check_panels(len(panels), "compare --per-matrix")
    grid = (len(metric_list), len(names)) if len(names) <= style.MAX_COLS else style.grid(len(panels))
    return (panels, *grid)


def _runs_panel(ax, m: str, name, runs, colours, matrices, pairs) -> list[np.ndarray]:
    """One curve per run: a logged curve, one matrix's metric, or the mean over matrices with a band of one
    standard deviation across them; returns the curves drawn."""
    drawn = []
    for run in runs:
        colour = colours[run.label]
        if m in HISTORY_KEYS:
            hx, hy = run.history(m)
            if len(hx):
                ax.plot(hx, hy, color=colour, label=run.label)
                drawn.append(hy)
            continue
        if name is not None:
            if name in run.store.matrices:
                y = run.metric(m)[:, run.store.matrices.index(name)]
                ax.plot(run.x, y, color=colour, label=run.label)
                drawn.append(y)
            continue
        mean, std, count = pooled(run, m, matrices, pairs)
        ax.plot(run.x, mean, color=colour, label=run.label)
        if count > 1:
            ax.fill_between(run.x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
        drawn.append(mean)
    return drawn


def _seed_curve(run, m: str, name, matrices, pairs) -> tuple[np.ndarray, np.ndarray]:
    """One seed's curve on its own steps: a run.json curve, one matrix's metric, or the mean over matrices."""
    if m in HISTORY_KEYS:
        if not run.log.has(m):
            return np.zeros(0), np.zeros(0)
        s, y = run.log.history["step"], run.log.history[m]
        keep = (s >= run.steps[0]) & (s <= run.steps[-1]) & np.isfinite(y)
        return s[keep], y[keep]
    if name is not None:
        if name not in run.store.matrices:
            return np.zeros(0), np.zeros(0)
        return run.steps, run.metric(m)[:, run.store.matrices.index(name)]
    return run.steps, pooled(run, m, matrices, pairs)[0]


def _seed_name(run) -> str:
    from specdyn.plots.runlog import store_name

    return store_name(run.store)


def _grouped_panel(ax, m, name, by_condition, colours, matrices, pairs, interpolate) -> list[np.ndarray]:
    """Mean ± std over each condition's seeds (grouping.seed_mean); returns the means drawn."""
    drawn = []
    for label, runs in by_condition:
        curves = [_seed_curve(r, m, name, matrices, pairs) for r in runs]
        where = f"group {label} ({style.metric_label(m)})"
        names = [_seed_name(r) for r in runs]
        steps, mean, std = grouping.seed_mean(curves, where, interpolate, names)
        if not len(steps):
            continue
        first = runs[0]
        xs = np.interp(steps, first.steps, first.x) if first.by_index else steps
        n = sum(1 for s, _ in curves if len(s))
        colour = colours[label]
        ax.plot(xs, mean, color=colour, label=f"{label} (n={n})" if len(runs) > 1 else label)
        if n > 1:
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
        drawn.append(mean)
    return drawn
