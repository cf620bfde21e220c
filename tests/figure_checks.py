"""Image checks from the drawn artists: every label inside the figure, no two labels overlapping, and a legend
that covers no data. Bounding boxes come from the renderer, as a reader would see the saved figure."""

import itertools

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

SLACK = 1.0  # pixels of rounding allowed at an edge


def _drawn_tick_labels(axis) -> list[Text]:
    if not axis.get_visible():  # a twin's shared axis is not drawn
        return []
    ticks = axis._update_ticks()  # the ticks inside the view, as the axis draws them
    return [t for tick in ticks for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text().strip()]


def labels(fig) -> list[tuple[str, Text]]:
    """(where, text) of every visible, non-empty piece of text the figure draws."""
    out = []
    for t in fig.texts + ([fig._suptitle] if fig._suptitle else []):
        out.append(("figure", t))
    for leg in fig.legends:
        out += [("figure legend", t) for t in leg.get_texts()]
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        where = f"axes {i}"
        for axis in (ax.xaxis, ax.yaxis):
            out += [(f"{where} ticks", t) for t in _drawn_tick_labels(axis)]
            if axis.get_visible():
                out += [(f"{where} label", axis.label), (f"{where} offset", axis.get_offset_text())]
        out += [(f"{where} title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        out += [(f"{where} text", t) for t in ax.texts]
        if ax.get_legend():
            out += [(f"{where} legend", t) for t in ax.get_legend().get_texts()]
    return [(w, t) for w, t in out if t.get_visible() and t.get_text().strip()]


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > SLACK and min(a.y1, b.y1) - max(a.y0, b.y0) > SLACK


def check_figure(fig) -> None:
    """Labels inside the figure and not overlapping one another; legends inside axes cover no data point."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    found = [(w, t, t.get_window_extent(renderer)) for w, t in labels(fig)]
    problems = []
    for w, t, b in found:
        if b.x0 < box.x0 - SLACK or b.y0 < box.y0 - SLACK or b.x1 > box.x1 + SLACK or b.y1 > box.y1 + SLACK:
            problems.append(f"{w} {t.get_text()!r} leaves the figure")
        if w.endswith(" text") and t.axes is not None and not t.axes.bbox.contains(*b.p0):
            problems.append(f"{w} {t.get_text()!r} leaves its axes")
    for (wa, ta, a), (wb, tb, b) in itertools.combinations(found, 2):
        if _overlap(a, b):
            problems.append(f"{wa} {ta.get_text()!r} overlaps {wb} {tb.get_text()!r}")
    for i, ax in enumerate(fig.axes):
        leg = ax.get_legend()
        if leg is None or not ax.get_visible():
            continue
        lb = leg.get_window_extent(renderer)
        if not _overlap(lb, ax.bbox):
            continue  # beside the axes
        for artist in ax.lines + ax.patches + ax.collections:
            for x, y in _points(artist, ax):
                if lb.x0 < x < lb.x1 and lb.y0 < y < lb.y1:
                    problems.append(f"axes {i} legend covers data of {artist.get_label()!r}")
                    break
    assert not problems, "\n".join(problems)


def _points(artist, ax) -> np.ndarray:
    """Display coordinates of an artist's data (line vertices, bar corners, collection offsets)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    if isinstance(artist, Line2D):
        xy = np.column_stack([artist.get_xdata(), artist.get_ydata()]).astype(float)
        xy = xy[np.isfinite(xy).all(axis=1)]
        return artist.get_transform().transform(xy) if len(xy) else np.zeros((0, 2))
    if isinstance(artist, Rectangle):
        return artist.get_window_extent().corners()
    offsets = getattr(artist, "get_offsets", lambda: np.zeros((0, 2)))()
    return artist.get_offset_transform().transform(offsets) if len(offsets) else np.zeros((0, 2))
