"""specdyn's figures: one module per kind, each a pure function `plot(stores, **options) -> Figure` that reads
`SpectralStore`s (and the runs' training logs) and returns a matplotlib Figure; `style.save` writes it.

    from specdyn.plots import PLOTS, style
    fig = PLOTS["rank-heatmap"]([specdyn.open_store("run")], metric="stable_rank")
    style.save(fig, "rank.pdf")

`registry.PLOTS` lists the kinds; `dispatch.make_figure` draws one with checked options (the CLI and the report).
"""

from specdyn.plots.registry import KINDS, PLOTS

__all__ = ["KINDS", "PLOTS"]
