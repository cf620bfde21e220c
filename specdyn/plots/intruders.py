"""`intruders`: intruder dimensions over training (Shuttleworth et al., arXiv 2410.21228; docs/method.md §11.3) at
one threshold ε, summed over the matrices of each kind (`q_proj`, `c_attn`, ...) or each layer; one panel per store.
Only groups the run changed (ΔW ≠ 0 somewhere) are drawn, so an adapter's untouched matrices add no flat lines."""

import re

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.plots import draw, select, style


def group_of(name: str, by: str) -> str:
    """A matrix's group: its kind (the name without its layer numbers: `layers.*.self_attn.q_proj`) or its layer
    (the first number in the name; `other` for embeddings and heads)."""
    name = name.removesuffix(".weight")
    if by == "layer":
        found = re.search(r"\.(\d+)\.", f".{name}.")
        return f"layer {found[1]}" if found else "other"
    return re.sub(r"\.\d+(?=\.)", ".*", name)


def counts(run, epsilon: float | None, matrices, by: str) -> tuple[np.ndarray, list[str], float]:
    """(checkpoint, group) intruder counts over the chosen matrices, the group labels, and the ε used."""
    st = run.store
    if not st.has_base:
        raise SpecdynError(f"{st.path}: analyzed without a base model; rerun `specdyn analyze RUN --base PATH`")
    eps = float(st.epsilons.min()) if epsilon is None else epsilon
    data = st.intruders(eps)[run.rows]
    changed = np.nan_to_num(st.metric("delta_frobenius_norm")[run.rows]).max(axis=0) > 0
    names = [n for n in select.matrices(run, matrices) if changed[st.matrices.index(n)]]
    groups = list(dict.fromkeys(group_of(n, by) for n in names))
    out = np.zeros((len(run.rows), len(groups)))
    for n in names:
        out[:, groups.index(group_of(n, by))] += np.nan_to_num(data[:, st.matrices.index(n)])
    return out, groups, eps


@style.styled
def plot(
    stores,
    *,
    epsilon: float | None = None,
    by: str = "kind",
    matrices: list[str] | None = None,
    steps: str | None = None,
    x: str = "step",
    log_x: str = "auto",
    title: str | None = None,
):
    runs, axis = select.prepare(stores, steps, x, log_x)
    select.check_panels(len(runs), "intruders")
    nrows, ncols = style.grid(len(runs))
    fig = style.figure(nrows, ncols, panel_w=style.PANEL_W + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, run in zip(axes, runs):
        ys, labels, eps = counts(run, epsilon, matrices, by)
        if not labels:
            draw.note(ax, "no matrix differs from the base")
        else:
            mappable = draw.lines(ax, axis, run.x, ys, labels, depth_label=by)
            if mappable is not None:
                draw.colorbar(fig, mappable, [ax], by)
            elif len(labels) > 1:
                ax.legend(fontsize="small")
        ax.set_ylabel(f"intruder dimensions (ε = {eps:g})")
        ax.set_title(run.label)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
