"""`prune` (the paper's Fig. 4): train and validation loss of the full model against the model keeping only the
top or only the bottom singular directions of every matrix but the final layer, over training; with a sweep of
keep fractions, the loss against the fraction of rank kept at the last evaluated checkpoint. Drawn from the
`evals/prune` group that `specdyn prune-eval` writes into the store (layout in docs/store.md); a store without
it gets a one-line error saying which command to run first."""

import numpy as np

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.plots import draw, select, style
from specdyn.plots.runlog import read_run_log, run_labels

MISSING = "no prune-eval results; run `specdyn prune-eval RUN_DIR` first"
# The paper's Set1 roles (red full, blue top kept, green bottom kept) in colour-blind-safe Okabe-Ito hues.
COLOURS = {"full": "#D55E00", "top_kept": "#0072B2", "bottom_kept": "#009E73"}


def line_style(curve: str, n_points: int) -> dict:
    """The full model as a wide pale band under the pruned models' lines: where keeping the top directions
    matches the full model (the paper's point) both stay visible."""
    if curve == "full":
        return {"color": COLOURS[curve], "lw": 4.0, "alpha": 0.45, "zorder": 1.5, "solid_capstyle": "round"}
    return {"color": COLOURS[curve], "lw": 1.3, "zorder": 2.5, "marker": "o" if n_points < 12 else None, "ms": 3}


def one_metric(metric) -> str:
    """`--metric` arrives as a list from the plot command; these figures show one metric (loss by default)."""
    if isinstance(metric, (list, tuple)):
        if len(metric) != 1:
            raise SpecdynError(
                f"--metric: this figure shows one metric (loss, err, ...), got {len(metric)}", code=EXIT_USAGE
            )
        metric = metric[0]
    return str(metric)


def has_results(store) -> bool:
    return select.eval_group(store, "prune")


def _results(store):
    from specdyn.evals.prune import load_results

    select.eval_group(store, "prune", MISSING)
    r = load_results(store.path)
    if r is None or len(r["step"]) == 0:
        raise SpecdynError(
            f"{store.path}: prune-eval has not finished any checkpoint yet; run `specdyn prune-eval` again"
        )
    return r


def _pick_keep(r, keep: float | None, store) -> int:
    fractions = [float(f) for f in r["keep"]]
    done = r["done"].any(axis=0)
    if keep is None:  # the paper's half, else the fraction evaluated at the most checkpoints
        if 0.5 in fractions and done[fractions.index(0.5)]:
            return fractions.index(0.5)
        return int(np.argmax(r["done"].sum(axis=0)))
    for j, f in enumerate(fractions):
        if abs(f - keep) < 1e-9 and done[j]:
            return j
    raise SpecdynError(
        f"{store.path}: no prune-eval results for --keep {keep:g}; it has "
        + ", ".join(f"{f:g}" for f, d in zip(fractions, done) if d)
    )


def _index(store, steps: np.ndarray) -> np.ndarray:
    """Checkpoint indices (positions among the store's analyzed checkpoints) of prune-eval's steps."""
    return np.searchsorted(np.asarray(store.steps), steps).astype(float)


def kept_fraction(r, store, j: int) -> tuple[float, float]:
    """Mean over the pruned matrices of the fraction of directions the top and the bottom variants keep."""
    ks = []
    for name in r["prune_matrix"]:
        try:
            ks.append(store.matrix_spec(str(name)).k)
        except SpecdynError:
            ks.append(np.nan)
    ks = np.array(ks, dtype=float)
    top = r["kept_rank"][j] / ks
    if np.all(np.isnan(top)):
        f = float(r["keep"][j])
        return f, 1 - f
    return float(np.nanmean(top)), float(np.nanmean(1 - top))


@style.styled
def plot(
    stores,
    *,
    keep: float | None = None,
    metric: str | list[str] = "loss",
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    from specdyn.selection import parse_steps

    metric = one_metric(metric)
    data = [_results(st) for st in stores]
    for st, r in zip(stores, data):
        if metric not in [str(m) for m in r["metric"]]:
            raise SpecdynError(
                f"{st.path}: prune-eval recorded no metric {metric!r}; it has " + ", ".join(str(m) for m in r["metric"])
            )
    lo, hi = parse_steps(steps) if steps else (None, None)
    sweep = any((r["done"].sum(axis=0) > 0).sum() > 1 for r in data)
    cols = 3 if sweep else 2
    fig = style.figure(len(stores), cols)
    axes = fig.subplots(len(stores), cols, squeeze=False)
    labels = run_labels(stores, [read_run_log(s) for s in stores])
    xs_all = []
    rows = []
    legend = {}
    for st, r in zip(stores, data):
        sel = np.ones(len(r["step"]), bool)
        if lo is not None:
            sel &= r["step"] >= lo
        if hi is not None:
            sel &= r["step"] <= hi
        if not sel.any():
            raise SpecdynError(f"{st.path}: --steps {steps} selects none of the prune-eval checkpoints")
        xs = r["step"][sel].astype(float) if x == "step" else _index(st, r["step"][sel])
        xs_all.append(r["step"][sel] if x == "step" else xs)
        rows.append((st, r, sel, xs))
    axis = style.XAxis.build(xs_all, x, log_x)
    mi_of = lambda r: [str(m) for m in r["metric"]].index(metric)  # noqa: E731
    for row_axes, label, (st, r, sel, xs) in zip(axes, labels, rows):
        j = _pick_keep(r, keep, st)
        f = float(r["keep"][j])
        top_frac, bottom_frac = kept_fraction(r, st, j)
        mi = mi_of(r)
        for si, split in enumerate(("train", "val")):
            ax = row_axes[si]
            ok = r["done"][sel, j]
            curves = {
                "full": (r["full"][sel, si, mi], "full model"),
                "top_kept": (np.where(ok, r["top_kept"][sel, j, si, mi], np.nan), f"top {f:g} of σ kept"),
                "bottom_kept": (np.where(ok, r["bottom_kept"][sel, j, si, mi], np.nan), f"bottom {1 - f:g} of σ kept"),
            }
            for name, (y, lab) in curves.items():
                ax.plot(xs, y, label=lab, **line_style(name, len(xs)))
            axis.apply(ax)
            ax.margins(x=0.02)
            if metric == "loss":
                draw.log_y(ax, np.concatenate([c[0] for c in curves.values()]))
            ax.set_ylabel(f"{'train' if split == 'train' else 'validation'} {style.metric_label(metric)}")
            ax.set_title(f"{label}: {split}" if len(stores) > 1 else ("train" if split == "train" else "validation"))
            draw.add_handles(legend, ax)
        if sweep:
            _sweep(row_axes[2], st, r, mi, metric)
    draw.legend_below(fig, legend)  # under the panels: inside, it covered the curves
    if title:
        fig.suptitle(title)
    return fig


def _sweep(ax, st, r, mi: int, metric: str) -> None:
    """Loss against the fraction of singular directions kept, at the last checkpoint with the most fractions."""
    counts = r["done"].sum(axis=1)
    i = int(np.flatnonzero(counts == counts.max())[-1])
    js = np.flatnonzero(r["done"][i])
    if len(js) < 2:
        draw.note(ax, "one keep fraction here;\nrun prune-eval with --keep 0.1,0.25,0.5,0.75")
        return
    fr = np.array([kept_fraction(r, st, j) for j in js])  # (fractions, 2): top, bottom
    ys = []
    for si, (split, ls) in enumerate((("train", "-"), ("val", "--"))):
        top = r["top_kept"][i, js, si, mi]
        bottom = r["bottom_kept"][i, js, si, mi]
        o_t, o_b = np.argsort(fr[:, 0]), np.argsort(fr[:, 1])
        ax.plot(fr[o_t, 0], top[o_t], color=COLOURS["top_kept"], ls=ls, marker="o", ms=3, label=f"top kept ({split})")
        ax.plot(
            fr[o_b, 1],
            bottom[o_b],
            color=COLOURS["bottom_kept"],
            ls=ls,
            marker="s",
            ms=3,
            label=f"bottom kept ({split})",
        )
        ax.axhline(r["full"][i, si, mi], color=COLOURS["full"], ls=ls, lw=1.0, label=f"full ({split})")
        ys += [top, bottom, [r["full"][i, si, mi]]]
    if metric == "loss":
        draw.log_y(ax, np.concatenate([np.ravel(y) for y in ys]))
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of singular directions kept")
    ax.set_ylabel(style.metric_label(metric))
    ax.set_title(f"sweep at step {int(r['step'][i])}")
    draw.legend_beside(ax, fontsize=6.5)
