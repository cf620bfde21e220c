"""The look of every specdyn figure, in one place: fonts, sizes, colour maps, name shortening, the x axis
(step or index, linear or log) and saving by file suffix.

Sizes are in inches and fonts in points at 1:1, so a figure placed at its natural width in a paper has 8-9 pt
text. Colour maps are matplotlib's perceptually uniform ones; the paper used seaborn's `rocket`, `flare_r` and
`mako`, for which `magma`, a truncated `magma` and `viridis` stand in (seaborn is not a dependency).
"""

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator

from specdyn import names
from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.spectral.metrics import METRICS as DECLARED

# ------------------------------------------------------------------------------------------- sizes and fonts

PANEL_W = 3.4  # one panel: a single column of a two-column paper
PANEL_H = 2.6
ROW_H = 0.14  # inches per matrix row in a heatmap, before the labels are thinned
HEATMAP_H = (2.6, 8.0)  # height range of a matrices-on-y heatmap panel
MAX_COLS = 4  # panels per figure row before wrapping
MAX_PANELS = 24
LABEL_MAX_CHARS = names.LABEL_MAX_CHARS

RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.4,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType in PDF: editable text, accepted by journals (Type 3 often is not)
    "ps.fonttype": 42,
    "svg.fonttype": "none",  # SVG text stays text
    "svg.hashsalt": "specdyn",  # deterministic SVG ids
    "image.cmap": "viridis",
}


def styled(fn):
    """Run a plot function under specdyn's rc settings (matplotlib reads them when artists are created)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def figure(nrows: int, ncols: int, panel_w: float = PANEL_W, panel_h: float = PANEL_H, extra_w: float = 0.0) -> Figure:
    """A constrained-layout Figure sized for a grid of panels (no pyplot state)."""
    return Figure(figsize=(ncols * panel_w + extra_w, nrows * panel_h), layout="constrained")


def grid(n: int, max_cols: int = MAX_COLS) -> tuple[int, int]:
    """(rows, cols) for n panels, wrapping after max_cols."""
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def label_width(labels: list[str]) -> float:
    """Inches the longest tick label takes at the tick font size (to widen a figure instead of its plot)."""
    return 0.6 * RC["ytick.labelsize"] / 72 * max((len(s) for s in labels), default=0)


def heatmap_height(n_rows: int) -> float:
    """Panel height for a heatmap with n_rows categorical rows (labels are thinned beyond what fits)."""
    lo, hi = HEATMAP_H
    return float(np.clip(1.2 + ROW_H * n_rows, lo, hi))


# ------------------------------------------------------------------------------------------- colours


def _truncated(name: str, lo: float, hi: float) -> ListedColormap:
    base = mpl.colormaps[name]
    return ListedColormap(base(np.linspace(lo, hi, 256)), name=f"{name}[{lo},{hi}]")


BAD = "#d9d9d9"  # NaN cells (a matrix with non-finite weights at that checkpoint)
CMAPS = {
    "rank": mpl.colormaps["magma"],  # paper: seaborn rocket
    "sv": _truncated("magma", 0.05, 0.82),  # paper: seaborn flare_r (rank 1 darkest); no near-white lines
    "stability": mpl.colormaps["inferno"],  # paper: inferno (diagonal) and magma (score)
    "alignment": mpl.colormaps["viridis"],  # paper: viridis (diagonal) and seaborn mako (score)
    "depth": mpl.colormaps["viridis"],  # many lines coloured by depth
    "norm": mpl.colormaps["cividis"],  # unbounded metrics (norms)
}
# Okabe-Ito: distinguishable with every common colour-vision deficiency.
CATEGORICAL = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
TRAIN, VAL = "#0072B2", "#D55E00"


def cmap(role: str):
    return CMAPS[role].with_extremes(bad=BAD)


# ------------------------------------------------------------------------------------------- metric labels

# From the metrics' declaration (spectral/metrics.py): those bounded in [0, 1] are drawn on one fixed [0, 1]
# colour scale so runs and models compare; every metric's axis label. The training log's curves are no metric.
UNIT_METRICS = {m.name for m in DECLARED.values() if m.unit}
METRIC_LABELS = {
    **{m.name: m.label for m in DECLARED.values()},
    "train_loss": "train loss",
    "val_loss": "validation loss",
    "train_err": "train error",
    "val_err": "validation error",
}


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name.replace("_", " "))


# ------------------------------------------------------------------------------------------- names

# Figure labels of matrices and pairs (specdyn.names; `--matrix` and SpectralStore accept them too).
shorten_names = names.shorten_names
shorten_pairs = names.shorten_pairs


# ------------------------------------------------------------------------------------------- x axis

LOG_DECADES = 2.0  # log-x once the positive steps span more than this many decades
LINSCALE = 0.5  # width of symlog's linear part (step 0 to the first positive step), in decades


def use_log_x(steps: list[np.ndarray], mode: str, log_x: str) -> bool:
    """Whether the x axis is logarithmic: never for checkpoint indices; for steps, `on`, `off`, or `auto`
    (when the positive steps span more than two decades)."""
    if mode == "index" or log_x == "off":
        return False
    pos = np.concatenate([np.asarray(s, dtype=float)[np.asarray(s) > 0] for s in steps]) if steps else np.zeros(0)
    if log_x == "on":
        return len(pos) > 0
    return len(pos) > 1 and math.log10(pos.max() / pos.min()) > LOG_DECADES


def compact_number(v: float, _pos=None) -> str:
    """0, 500, 1k, 2.5k, 10k, 1M: tick labels that never need an offset or an exponent."""
    a = abs(v)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}" if a else "0"


class StepLogLocator(Locator):
    """Ticks of a symlog step axis: 0, then the powers of ten from the first positive step on (symlog's own
    locator also ticks decades inside the linear part, where their labels collide with 0)."""

    def __init__(self, linthresh: float):
        self.linthresh = linthresh

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        lo, hi = min(vmin, vmax), max(vmin, vmax)
        ticks = [0.0] if lo <= 0 <= hi else []
        if hi >= self.linthresh:
            first = math.ceil(math.log10(self.linthresh) - 1e-9)
            ticks += [10.0**k for k in range(first, math.floor(math.log10(hi) + 1e-9) + 1) if 10.0**k >= lo]
        return ticks


@dataclass
class XAxis:
    """The x axis shared by a figure's time panels: checkpoint step or index, linear or symlog.

    The log axis is `symlog` with its linear part below the first positive step, so step 0 (initialisation)
    keeps its place at the left edge and every later checkpoint sits on a log scale; ticks show true steps.
    """

    mode: str  # "step" | "index"
    log: bool = False
    linthresh: float = 1.0

    @classmethod
    def build(cls, steps: list[np.ndarray], mode: str = "step", log_x: str = "auto") -> "XAxis":
        if mode not in ("step", "index"):
            raise SpecdynError(f"--x {mode!r}: expected `step` or `index`", code=EXIT_USAGE)
        if log_x not in ("auto", "on", "off"):
            raise SpecdynError(f"--log-x {log_x!r}: expected `auto`, `on` or `off`", code=EXIT_USAGE)
        log = use_log_x(steps, mode, log_x)
        pos = [float(np.min(np.asarray(s)[np.asarray(s) > 0])) for s in steps if np.any(np.asarray(s) > 0)]
        return cls(mode, log, min(pos) if pos else 1.0)

    @property
    def label(self) -> str:
        return "training step" + (" (log scale)" if self.log else "") if self.mode == "step" else "checkpoint index"

    def transform(self):
        from matplotlib.scale import SymmetricalLogTransform

        return SymmetricalLogTransform(10, self.linthresh, LINSCALE) if self.log else None

    def apply(self, ax, label: bool = True) -> None:
        if self.log:
            ax.set_xscale("symlog", linthresh=self.linthresh, linscale=LINSCALE)
            ax.xaxis.set_major_locator(StepLogLocator(self.linthresh))
        if self.mode == "step":
            ax.xaxis.set_major_formatter(FuncFormatter(compact_number))
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if label:
            ax.set_xlabel(self.label)

    def edges(self, x: np.ndarray) -> np.ndarray:
        """Cell edges around the checkpoints for heatmaps, midway in the axis's own (possibly log) space."""
        x = np.asarray(x, dtype=float)
        t = self.transform()
        u = t.transform(x[:, None])[:, 0] if t is not None else x
        if len(u) == 1:
            e = np.array([u[0] - 0.5, u[0] + 0.5])
        else:
            mid = (u[1:] + u[:-1]) / 2
            e = np.concatenate([[2 * u[0] - mid[0]], mid, [2 * u[-1] - mid[-1]]])
        e = t.inverted().transform(e[:, None])[:, 0] if t is not None else e
        if self.mode == "step" and x[0] >= 0:
            e[0] = max(e[0], 0.0)  # nothing happens before step 0: no negative steps on the axis
        return e


# ------------------------------------------------------------------------------------------- saving

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def save(fig: Figure, path, dpi: int | None = None, named: bool = True) -> Path:
    """Write a figure in the format its suffix names (png, svg or pdf), creating the folder; atomically, and
    through a link at `path` only where the caller `named` it (specdyn.files)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from specdyn.files import atomic_open

    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SpecdynError(f"{path}: unknown figure format {path.suffix or '(none)'!r}; use .png, .svg or .pdf")
    FigureCanvasAgg(fig)
    # No creation dates in the files: the same store gives byte-identical svg/pdf.
    meta = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}[fmt]
    with mpl.rc_context(RC), atomic_open(path, "wb", named=named) as f:
        fig.savefig(f, format=fmt, dpi=dpi or RC["savefig.dpi"], metadata=meta)
    return path
