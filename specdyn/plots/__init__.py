"""specdyn's figures: one module per kind, each a pure function `plot(stores, **options) -> Figure` that reads
`SpectralStore`s (and the runs' run.json) and returns a matplotlib Figure; `style.save` writes it.

    from specdyn.plots import PLOTS, style
    fig = PLOTS["rank-heatmap"]([specdyn.open_store("run")], metric="stable_rank")
    style.save(fig, "rank.pdf")
"""

from specdyn.plots import alignment, compare, grokking, interp, metrics, prune, rank_heatmap, stability, sv

# The registry of figure kinds: `specdyn plot KIND` and the report look kinds up here.
PLOTS = {
    "rank-heatmap": rank_heatmap.plot,
    "sv": sv.plot,
    "stability": stability.plot,
    "alignment": alignment.plot,
    "metrics": metrics.plot,
    "grokking": grokking.plot,
    "compare": compare.plot,
    "prune": prune.plot,
    "interp": interp.plot,
}

__all__ = ["PLOTS"]
