"""What a figure may be asked, declared once (imported without matplotlib, so `--help` stays fast). Each field
is a keyword of the plot functions that take it; `dispatch` refuses a field a kind does not take."""

import dataclasses
from dataclasses import dataclass

from specdyn.options import Options, flag_of, one_fraction, option


@dataclass(frozen=True)
class PlotOptions(Options):
    dpi: int = option(200, min=10, help="Resolution of png output (and of heatmaps in svg/pdf).")
    title: str | None = option(None, help="Figure title.")
    matrices: list[str] | None = option(None, help="Matrices shown (glob, full or short name; repeatable). Default: "
                                        "all.")  # fmt: skip
    matrix: list[str] | None = option(None, help="The matrix of single-matrix panels (sv: repeatable). Default: the "
                                      "first attention in-projection, else the middle matrix.")  # fmt: skip
    pair: str | None = option(None, help="The pair of the alignment-diagonal panel. Default: embedding -> first "
                              "attention, else the middle pair.")  # fmt: skip
    pairs: list[str] | None = option(None, help="Pairs shown in alignment-score views (glob; repeatable). Default: "
                                     "all.")  # fmt: skip
    metric: list[str] | None = option(None, help="Metric (repeatable): effective_rank, stable_rank, count90, "
                                      "stability_score, subspace_overlap, spectral_norm, ...; compare also takes "
                                      "train_loss, val_loss, train_err, val_err.")  # fmt: skip
    steps: str | None = option(None, help="Only checkpoints with step in a:b (inclusive; either side may be empty).")
    x: str = option("step", "--x", choices=("step", "index"), help="x axis: `step` or `index` (checkpoint index, "
                    "as the paper).")  # fmt: skip
    log_x: str = option("auto", choices=("auto", "on", "off"), help="Log step axis: auto (when steps span > 2 "
                        "decades), on, off.")  # fmt: skip
    top: int | None = option(None, min=1, help="Only the N largest singular values / ranks.")
    normalize: bool = option(False, help="sv: divide by the largest singular value at each checkpoint.")
    log_y: bool = option(False, help="Log y axis (sv, metrics, compare).")
    per_matrix: bool = option(False, help="compare: one panel per matrix instead of the mean.")
    loss: bool = option(True, "--loss/--no-loss", help="metrics: the run's train/val loss on a right-hand axis.")
    keep: float | None = option(None, help="prune: the kept fraction to draw (of a --keep sweep).",
                                parse=lambda v: one_fraction(v, "--keep", "plot prune"))  # fmt: skip
    split: str | None = option(None, help="interp: `train` or `val` curves.")
    curve: str | None = option(None, help="interp: full, top_kept or bottom_kept model along the path.")
    checkpoints: int | None = option(None, min=1, help="esd: how many checkpoints to overlay, log-spaced over "
                                     "--steps (default 5).")  # fmt: skip
    group: list[str] | None = option(None, "--group", metavar="NAME=GLOB", help="compare: a condition of several "
                                     "seeds (repeatable), e.g. --group wd1='runs/wd1-s*': mean ± std over its "
                                     "seeds.")  # fmt: skip
    groups_file: str | None = option(None, "--groups", help='compare: a TOML/JSON file naming conditions: '
                                     '{"groups": {"wd1": ["runs/wd1-s*"]}}.')  # fmt: skip
    interpolate_steps: bool = option(False, help="compare with groups: interpolate seeds whose step grids differ.")
    epsilon: float | None = option(None, min=0, max=1, help="intruders: the threshold ε drawn (default: the "
                                   "smallest the store holds).")  # fmt: skip
    by: str = option("kind", choices=("kind", "layer"), help="intruders: sum the counts per matrix kind or per "
                     "layer.")  # fmt: skip

    def given(self) -> dict:
        """The figure keywords the user set (those that differ from their defaults); dpi is for saving. `--group`
        and `--groups` become one `groups` keyword: the opened conditions (plots.groups)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("dpi", "group", "groups_file") and getattr(self, f.name) != f.default
        }
        if self.group or self.groups_file:
            from specdyn.plots.groups import conditions_from_args

            out["groups"] = conditions_from_args(self.group, self.groups_file)
        return out


def flags() -> dict[str, str]:
    """The CLI flag of every figure keyword, as a user would type it to change it (`--no-loss`)."""
    out = {}
    for f in dataclasses.fields(PlotOptions):
        spelled = f.metadata["specdyn"]["flags"]
        negative = f.default is True and spelled and "/" in spelled[0]
        out[f.name] = spelled[0].split("/")[1] if negative else flag_of(f)
    out["groups"] = "--group/--groups"
    return out
