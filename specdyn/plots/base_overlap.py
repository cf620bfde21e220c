"""`base-overlap`: the top-10 left singular subspace overlap with the base model (docs/method.md §11.2) as a
heatmap, matrices by depth on y and checkpoints on x, as `rank-heatmap` draws a metric."""

from specdyn.plots import rank_heatmap, style


@style.styled
def plot(stores, *, matrices=None, steps=None, x="step", log_x="auto", title=None):
    return rank_heatmap.plot(stores, metric="base_overlap", matrices=matrices, steps=steps, x=x, log_x=log_x,
                             title=title)  # fmt: skip
