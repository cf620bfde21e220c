"""`delta-rank`: the normalized effective rank of the update ΔW = W − W_base (docs/method.md §11.1) as a heatmap,
matrices by depth on y and checkpoints on x: a LoRA update stays near r/k, a full fine-tune spreads."""

from specdyn.plots import rank_heatmap, style


@style.styled
def plot(stores, *, matrices=None, steps=None, x="step", log_x="auto", title=None):
    return rank_heatmap.plot(stores, metric="delta_effective_rank", matrices=matrices, steps=steps, x=x, log_x=log_x,
                             title=title)  # fmt: skip
