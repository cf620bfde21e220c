"""`esd`: the empirical spectral density of one matrix (eigenvalues lambda = s^2, log-log) at several
checkpoints overlaid, each with its WeightWatcher power-law fit (docs/method.md §10.1) drawn over [xmin,
lambda_max] and xmin marked. Colour runs from early (light) to late (dark). One panel per (store, matrix)."""

import numpy as np
from matplotlib.colors import Normalize

from specdyn.plots import draw, select, style
from specdyn.plots.sv import _as_list, chosen_matrices
from specdyn.spectral.heavy_tail import eigenvalues, power_law_fit

DEFAULT_CHECKPOINTS = 5
BINS = 40


def pick_rows(n: int, count: int) -> np.ndarray:
    """About `count` of n checkpoint rows, spread evenly in log(index + 1) so early training is dense; always
    the first and the last."""
    if n <= count:
        return np.arange(n)
    idx = np.unique(np.round(np.geomspace(1, n, count)).astype(int) - 1)
    return np.unique(np.concatenate([[0], idx, [n - 1]]))


def density(evals: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histogram density of the positive eigenvalues on log-spaced bins (integrates to 1 over lambda)."""
    counts, _ = np.histogram(evals, bins=edges)
    width = np.diff(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = counts / (counts.sum() * width)
    centres = np.sqrt(edges[:-1] * edges[1:])
    return centres[counts > 0], d[counts > 0]


def fit_line(evals: np.ndarray, fit: dict) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power law as a density over all eigenvalues: the tail's share times
    (alpha - 1) / xmin * (lambda / xmin)^-alpha, on [xmin, lambda_max]."""
    a, xmin = fit["alpha"], fit["xmin"]
    lam = np.geomspace(xmin, evals.max(), 50)
    share = fit["num_pl_spikes"] / len(evals)
    return lam, share * (a - 1) / xmin * (lam / xmin) ** (-a)


@style.styled
def plot(
    stores,
    *,
    matrix: list[str] | str | None = None,
    matrices: list[str] | None = None,
    checkpoints: int | None = None,
    steps: str | None = None,
    title: str | None = None,
):
    count = DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints
    if count < 1:
        from specdyn.errors import EXIT_USAGE, SpecdynError

        raise SpecdynError(
            f"--checkpoints {count}: must be a positive number of checkpoints to overlay", code=EXIT_USAGE
        )
    runs, _ = select.prepare(stores, steps)
    panels = [(run, name) for run in runs for name in chosen_matrices(run, _as_list(matrix), matrices)]
    select.check_panels(len(panels), "esd")
    nrows, ncols = style.grid(len(panels))
    fig = style.figure(nrows, ncols, panel_w=style.PANEL_W + 1.3)  # the legend sits beside each panel
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    cm = style.cmap("sv").reversed()  # light early, dark late
    for ax, (run, name) in zip(axes, panels):
        sv = run.store.sv(name)[run.rows]
        rows = pick_rows(len(run.rows), count)
        steps_shown = run.steps[rows]
        norm = Normalize(0, max(len(rows) - 1, 1))
        all_ev = [eigenvalues(sv[i]) for i in rows]
        pos = np.concatenate([e[e > 0] for e in all_ev] or [np.zeros(0)])
        if pos.size == 0:
            draw.note(ax, "no positive eigenvalues")
            continue
        edges = np.geomspace(pos.min(), pos.max() * (1 + 1e-9), BINS + 1)
        for c, ev in enumerate(all_ev):
            colour = cm(norm(c))
            x, d = density(ev[ev > 0], edges)
            fit = power_law_fit(ev)
            fitted = np.isfinite(fit["alpha"])
            # α goes into the legend: labels at the curves' ends overlap once tails end close together
            label = f"step {steps_shown[c]}" + (f"  α={fit['alpha']:.2f}" if fitted else "")
            ax.plot(x, d, color=colour, lw=1.2, marker="o", ms=2, label=label)
            if fitted:
                lx, ly = fit_line(ev, fit)
                ax.plot(lx, ly, color=colour, lw=1.0, ls="--")
                ax.axvline(fit["xmin"], color=colour, lw=0.6, ls=":")
        ax.plot([], [], color="0.4", lw=1.0, ls="--", label="power-law fit")
        ax.plot([], [], color="0.4", lw=0.6, ls=":", label="its xmin")
        draw.log_axis(ax.xaxis, edges[0], edges[-1])
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ = σ²")
        ax.set_ylabel("density")
        short = dict(zip(run.store.matrices, style.shorten_names(run.store.matrices)))[name]
        ax.set_title(short if len(runs) == 1 else f"{run.label}: {short}")
        draw.legend_beside(ax, fontsize=6)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
