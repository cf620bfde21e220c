"""`interp`: linear mode connectivity (the paper's LMC figures): the signed loss barrier against the split point
(mean ± std over the pairs of each split, for the full, top-kept and bottom-kept models) and the loss along the
interpolation path, one line per split point. Drawn from the `evals/interp` group that `specdyn interpolate`
writes (layout in docs/store.md); a store without it gets a one-line error saying which command to run first."""

from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.colors import Normalize

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.files import name_text
from specdyn.plots import draw, select, style
from specdyn.plots.prune import COLOURS, one_metric

MISSING = "no interpolation results; run `specdyn interpolate CKPT_A CKPT_B` first"
CURVE_LABELS = {"full": "full model", "top_kept": "top f of σ kept", "bottom_kept": "bottom 1 - f of σ kept"}


def curve_label(curve: str, keep: float | None) -> str:
    if keep is None or curve == "full":
        return CURVE_LABELS[curve]
    return f"top {keep:g} of σ kept" if curve == "top_kept" else f"bottom {1 - keep:g} of σ kept"


def has_results(store) -> bool:
    return select.eval_group(store, "interp")


def _results(store):
    from specdyn.evals.interpolate import load_results

    select.eval_group(store, "interp", MISSING)
    r = load_results(store.path)
    if r is None or len(r["done"]) == 0:
        raise SpecdynError(f"{store.path}: interpolate has not finished any pair yet; run it again")
    return r


def _groups(r, steps: str | None):
    """(split step, label) -> row indices, ordered by split step; --steps a:b filters split steps."""
    from specdyn.selection import parse_steps

    lo, hi = parse_steps(steps) if steps else (None, None)
    groups: dict[tuple, list[int]] = {}
    for i, (s, lab) in enumerate(zip(r["split_step"], r["label"])):
        s = int(s)
        if (lo is not None and s < lo) or (hi is not None and s > hi):
            continue
        groups.setdefault((s, str(lab)), []).append(i)
    return dict(sorted(groups.items()))


def _name(step: int, label: str) -> str:
    return label or (f"split {step}" if step >= 0 else "pair")


@style.styled
def plot(
    stores,
    *,
    metric: str | list[str] = "loss",
    split: str = "train",
    curve: str = "full",
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    metric = one_metric(metric)
    if curve not in CURVE_LABELS:
        raise SpecdynError(f"--curve {curve!r}: one of {', '.join(CURVE_LABELS)}", code=EXIT_USAGE)
    if split not in ("train", "val"):
        raise SpecdynError(f"--split {split!r}: train or val", code=EXIT_USAGE)
    data = [_results(st) for st in stores]
    legend = {}
    fig = style.figure(len(stores), 2, extra_w=0.6)
    axes = fig.subplots(len(stores), 2, squeeze=False)
    for (ax_b, ax_a), st, r in zip(axes, stores, data):
        metrics = [str(m) for m in r["metric"]]
        if metric not in metrics:
            raise SpecdynError(f"{st.path}: interpolate recorded no metric {metric!r}; it has {', '.join(metrics)}")
        mi, si = metrics.index(metric), ("train", "val").index(split)
        groups = _groups(r, steps)
        if not groups:
            raise SpecdynError(f"{st.path}: --steps {steps} selects no split step of the interpolation results")
        keys = list(groups)
        name = style.metric_label(metric)
        prefix = f"{name_text(Path(st.path).parent.name)}: " if len(stores) > 1 else ""
        keep = r["attrs"].get("keep")
        _barriers(ax_b, r, groups, keys, si, mi, x, log_x, f"{split} {name} barrier", keep)
        ax_b.set_title(
            f"{prefix}barrier ({'mean ± std over pairs' if any(len(v) > 1 for v in groups.values()) else 'per pair'})"
        )
        mappable = _paths(ax_a, r, groups, keys, curve, si, mi)
        ax_a.set_xlabel("interpolation α (0 = A, 1 = B)")
        ax_a.set_ylabel(f"{split} {name}")
        ax_a.set_title(f"{prefix}{curve_label(curve, keep)} along the path")
        if metric == "loss":
            draw.log_y(ax_a, r[curve][:, :, si, mi])
        if mappable is not None:
            draw.colorbar(fig, mappable, ax_a, "split step", shrink=1.0, aspect=25)
        else:
            draw.legend_beside(ax_a)
        draw.add_handles(legend, ax_b)
    draw.legend_below(fig, legend)  # the models' legend under the panels: inside, it covered the bars
    if title:
        fig.suptitle(title)
    return fig


def _barriers(ax, r, groups, keys, si: int, mi: int, x: str, log_x: str, ylabel: str, keep) -> None:
    """Barrier per split point for the three models: lines with ±std bands, or bars for a single split."""
    steps = np.array([k[0] for k in keys])
    numeric = len(keys) > 1 and np.all(steps >= 0) and len(set(steps.tolist())) == len(keys)
    for c in ("full", "top_kept", "bottom_kept"):
        vals = [r[f"{c}_barrier"][groups[k], si, mi] for k in keys]
        mean = np.array([np.mean(v) for v in vals])
        std = np.array([np.std(v) for v in vals])  # ddof 0, as the paper's merge
        if numeric:
            xs = steps.astype(float) if x == "step" else np.arange(len(keys), dtype=float)
            ax.plot(xs, mean, color=COLOURS[c], marker="o", ms=3, label=curve_label(c, keep))
            ax.fill_between(xs, mean - std, mean + std, color=COLOURS[c], alpha=0.2, lw=0)
        else:
            offset = {"full": -0.27, "top_kept": 0.0, "bottom_kept": 0.27}[c]
            ax.bar(
                np.arange(len(keys)) + offset,
                mean,
                width=0.26,
                yerr=std if np.any(std) else None,
                color=COLOURS[c],
                label=curve_label(c, keep),
            )
    if numeric:
        axis = style.XAxis.build([steps], x, log_x)
        axis.apply(ax, label=False)
        ax.set_xlabel("split step" + (" (log scale)" if axis.log else "") if x == "step" else "split index")
    else:
        names = [_name(*k).replace(" vs ", "\nvs ") for k in keys]  # pair labels on two lines
        widest = max(len(line) for n in names for line in n.split("\n"))
        crowded = len(keys) > 3 or widest * len(keys) > 24  # characters a panel's width holds at tick size
        ax.set_xticks(range(len(keys)), names, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.axhline(0, color="0.5", lw=0.6, zorder=0)
    ax.set_ylabel(ylabel)


def _paths(ax, r, groups, keys, curve: str, si: int, mi: int):
    """Mean curve over each split's pairs along alpha; coloured by split step when there are several."""
    alpha = r["alpha"]
    steps = [k[0] for k in keys]
    many = len(keys) > 3 and all(s >= 0 for s in steps)
    cmap = style.cmap("depth")
    norm = Normalize(min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1)
    for j, k in enumerate(keys):
        y = r[curve][groups[k], :, si, mi].mean(axis=0)
        colour = cmap(norm(k[0])) if many else style.CATEGORICAL[j % len(style.CATEGORICAL)]
        ax.plot(alpha, y, color=colour, marker="o" if len(alpha) <= 21 else None, ms=2.5, label=_name(*k))
    ax.set_xlim(0, 1)
    return mpl.cm.ScalarMappable(norm=norm, cmap=cmap) if many else None
