"""`specdyn report`: one self-contained HTML page that shows a run (or several) at a glance.

A summary table per store (checkpoints, matrices, final metrics and losses), then every figure kind for the
whole model and for its most interesting matrices (largest effective-rank drop from the first checkpoint to the
last, least stable at the final-but-one checkpoint), comparisons when several stores are given, and the
prune / interpolation results where a store holds them. Figures are embedded as base64 PNG: the file can be
mailed or archived alone.
"""

import base64
import datetime
import html
import io
from dataclasses import dataclass, field

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.version import __version__

REPORT_DPI = 110
N_INTERESTING = 3


@dataclass
class FigureJob:
    """One figure of the report: a plot kind, its stores and options, and what it shows."""

    section: str
    heading: str
    caption: str
    kind: str
    stores: list
    options: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- choosing matrices


def interesting_matrices(store, n: int = N_INTERESTING) -> dict[str, list[tuple[str, float]]]:
    """The matrices most worth a look: largest drop of normalized effective rank from the first checkpoint to
    the last, and lowest stability score at the final-but-one checkpoint (at the final one it is 1 by
    definition). Each list holds (name, value), most interesting first."""
    names = store.matrices
    erank = store.metric("effective_rank")
    out = {"rank_drop": [], "least_stable": []}
    if len(erank) >= 2:
        drop = erank[0] - erank[-1]
        order = [j for j in np.argsort(-np.nan_to_num(drop, nan=-np.inf)) if np.isfinite(drop[j])]
        out["rank_drop"] = [(names[j], float(drop[j])) for j in order[:n]]
        stab = store.metric("stability_score")[-2]
        order = [j for j in np.argsort(np.nan_to_num(stab, nan=np.inf)) if np.isfinite(stab[j])]
        out["least_stable"] = [(names[j], float(stab[j])) for j in order[:n]]
    return out


# ------------------------------------------------------------------------------------------- the figure list


def condition_jobs(conditions, interpolate_steps: bool = False) -> list[FigureJob]:
    """The "Conditions" section: every spectral metric, the alignment score and the training curves, as the
    mean over each condition's seeds with a band of one standard deviation (ddof 0)."""
    if not conditions:
        return []
    from specdyn.plots import select

    opts = {"groups": conditions, "interpolate_steps": interpolate_steps}
    every = [st for c in conditions for st in c.stores]
    sec, cap = "Conditions", "Mean over each condition's seeds (band: ± one standard deviation over seeds, ddof 0)."
    jobs = [
        FigureJob(sec, "Spectral metrics by condition", cap, "compare", [],
                  {**opts, "metric": ["effective_rank", "stable_rank", "stability_score", "alpha"]}),
    ]  # fmt: skip
    if all(select.pair_specs(st) for st in every):
        jobs.append(
            FigureJob(sec, "Alignment score by condition", cap, "compare", [], {**opts, "metric": "alignment_score"})
        )
    logs = [m for m in ("train_loss", "val_loss", "train_err", "val_err") if _any_log(every, m)]
    if logs:
        jobs.append(FigureJob(sec, "Training curves by condition", cap, "compare", [], {**opts, "metric": logs}))
    return jobs


def figure_jobs(stores, labels: list[str]) -> list[FigureJob]:
    """Every figure of the report: comparisons across runs (with several stores), then each run's own."""
    jobs = _comparison_jobs(stores) if len(stores) > 1 else []
    for st, label in zip(stores, labels):
        jobs += _run_jobs(st, label)
    return jobs


def _comparison_jobs(stores) -> list[FigureJob]:
    sec = "Comparison"
    mean = "Mean over every matrix of each run (band: ± one standard deviation across matrices)."
    jobs = [FigureJob(sec, "Spectral metrics, all runs", mean, "compare", stores,
                      {"metric": ["effective_rank", "stable_rank", "stability_score"]})]  # fmt: skip
    logs = [m for m in ("train_loss", "val_loss", "train_err", "val_err") if _any_log(stores, m)]
    if logs:
        jobs.append(FigureJob(sec, "Training curves, all runs", "From each run's training log.", "compare", stores,
                              {"metric": logs}))  # fmt: skip
    heat = "Normalized effective rank of every matrix; one colour scale, fixed to [0, 1]."
    jobs.append(FigureJob(sec, "Effective rank, all runs", heat, "rank-heatmap", stores))
    jobs.append(FigureJob(sec, "At a glance, all runs", "One row per run (the paper's Fig. 2).", "grokking", stores))
    return jobs


def _run_jobs(st, sec: str) -> list[FigureJob]:
    from specdyn.plots import interp, prune, select

    pick = interesting_matrices(st)
    least = pick["least_stable"][0][0] if pick["least_stable"] else None
    shown = list(dict.fromkeys([n for n, _ in pick["rank_drop"][:2]] + [n for n, _ in pick["least_stable"][:2]]))
    glance = ("Loss and error (the training log), the singular values of one matrix, the effective rank of every matrix, "
              "and the alignment diagonal of one pair.")  # fmt: skip
    heat = "Normalized effective rank (docs/method.md 1.2), matrices by depth, first at the top."
    ranks = "Normalized effective rank and stable rank of every matrix, with the logged losses on the right axis."
    stability = ("Left: the SVA diagonal of the least stable matrix against the final checkpoint; right: the "
                 "stability score of every matrix.")  # fmt: skip
    jobs = [
        FigureJob(sec, "At a glance", glance, "grokking", [st]),
        FigureJob(sec, "Effective rank of every matrix", heat, "rank-heatmap", [st]),
        FigureJob(sec, "Rank metrics and loss", ranks, "metrics", [st], {"metric": ["effective_rank", "stable_rank"]}),
        FigureJob(sec, "Stability", stability, "stability", [st], {"matrix": least} if least else {}),
    ]
    if select.pair_specs(st):
        alignment = "Left: the alignment diagonal of one neighbouring pair; right: the alignment score of every pair."
        jobs.append(FigureJob(sec, "Alignment", alignment, "alignment", [st]))
    if shown:
        sv = "The largest drops of effective rank and the least stable matrices (see the table)."
        jobs.append(FigureJob(sec, "Singular values of the most interesting matrices", sv, "sv", [st],
                              {"matrix": shown}))  # fmt: skip
    if st.has_base:
        base = f"Against the base model {st.base['path']} (docs/method.md §11)."
        jobs += [
            FigureJob(sec, "Intruder dimensions", base + " Top singular vectors nearly orthogonal to every singular "
                      "vector of the base (Shuttleworth et al.), per matrix kind, at the smallest ε.", "intruders", [st]),
            FigureJob(sec, "Overlap with the base", base, "base-overlap", [st]),
            FigureJob(sec, "Effective rank of the update", base + " ΔW = W − W_base.", "delta-rank", [st]),
        ]  # fmt: skip
    if prune.has_results(st):
        jobs.append(FigureJob(sec, "Low-rank pruning", "From `specdyn prune-eval`.", "prune", [st]))
    if interp.has_results(st):
        jobs.append(FigureJob(sec, "Interpolation", "From `specdyn interpolate`.", "interp", [st]))
    return jobs


def _any_log(stores, key: str) -> bool:
    from specdyn.plots.runlog import read_run_log

    return any(read_run_log(s).has(key) for s in stores)


# ------------------------------------------------------------------------------------------- rendering


def render_png(fig, dpi: int = REPORT_DPI) -> tuple[str, float]:
    """A figure as base64 PNG, and its natural width in CSS pixels (96 per inch)."""
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from specdyn.plots import style

    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    with mpl.rc_context(style.RC):
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii"), fig.get_figwidth() * 96


def summary_rows(store) -> list[dict]:
    """Per-matrix rows of the summary table."""
    from specdyn.plots import style

    names = store.matrices
    short = style.shorten_names(names)
    er, sr = store.metric("effective_rank"), store.metric("stable_rank")
    stab, norm = store.metric("stability_score"), store.metric("spectral_norm")
    rows = []
    for j, name in enumerate(names):
        spec = store.matrix_spec(name)
        rows.append(
            {
                "name": name,
                "short": short[j],
                "kind": spec.kind,
                "shape": "×".join(map(str, spec.original_shape)),
                "erank_first": er[0, j],
                "erank_last": er[-1, j],
                "stable_last": sr[-1, j],
                "stability": stab[-2, j] if len(stab) > 1 else np.nan,
                "norm_last": norm[-1, j],
            }
        )
    return rows


def _f(v, fmt="{:.3f}") -> str:
    return "—" if v is None or not np.isfinite(v) else fmt.format(v)


def store_table(store, label: str, log, pick) -> str:
    steps = store.steps
    facts = [
        ("store", html.escape(str(store.path))),
        ("runs", "<br>".join(html.escape(str(d)) for d in store.run_dirs) or "—"),
        ("task", html.escape(str(log.task or "—"))),
        ("checkpoints", f"{len(store)} (steps {steps[0]}…{steps[-1]})" if len(store) else "0"),
        ("matrices / pairs", f"{len(store.matrices)} / {len(store.pairs)}"),
        ("singular vectors kept", str(store.top)),
    ]
    for key, name in (
        ("train_loss", "final train loss"),
        ("val_loss", "final validation loss"),
        ("train_err", "final train error"),
        ("val_err", "final validation error"),
    ):
        if log.has(key):
            logged = f" ({html.escape(log.names[key])})" if key in log.names else ""
            facts.append((name + logged, _f(log.final(key), "{:.4g}")))
    if log.sources:
        facts.append(("training log", "<br>".join(html.escape(s) for s in log.sources)))
    revisions = [r for r in store.revisions if r is not None]
    if revisions:
        repos = {s.get("repo") for s in store.sources if s.get("repo")}
        facts.append(("hub revisions", html.escape(f"{', '.join(sorted(repos))}: {revisions[0]} … {revisions[-1]}")))
    if log.config:
        facts.append(("config", html.escape(", ".join(f"{k}={v}" for k, v in log.config.items()))))
    out = ['<table class="facts">'] + [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts] + ["</table>"]
    marks = {n: "rank drop" for n, _ in pick["rank_drop"]}
    for n, _ in pick["least_stable"]:
        marks[n] = (marks[n] + ", " if n in marks else "") + "least stable"
    rows = summary_rows(store)
    head = (
        "<tr><th>matrix</th><th>kind</th><th>shape</th><th>eff. rank first → last</th><th>stable rank</th>"
        "<th>stability (final−1)</th><th>‖W‖₂</th><th>shown below for</th></tr>"
    )
    body = []
    for r in rows:
        cls = ' class="hot"' if r["name"] in marks else ""
        body.append(
            f'<tr{cls}><td title="{html.escape(r["name"])}">{html.escape(r["short"])}</td>'
            f"<td>{html.escape(str(r['kind']))}</td><td>{html.escape(str(r['shape']))}</td>"
            f"<td>{_f(r['erank_first'])} → {_f(r['erank_last'])}</td>"
            f"<td>{_f(r['stable_last'])}</td><td>{_f(r['stability'])}</td><td>{_f(r['norm_last'], '{:.3g}')}</td>"
            f"<td>{html.escape(marks.get(r['name'], ''))}</td></tr>"
        )
    table = f'<table class="matrices">{head}{"".join(body)}</table>'
    if len(rows) > 12:
        table = f"<details><summary>{len(rows)} matrices (final checkpoint)</summary>{table}</details>"
    return "".join(out) + table + metrics_table(store)


def metrics_table(store) -> str:
    """Every declared metric (spectral/metrics.py) of every matrix at the final checkpoint, folded; headers are
    the metrics' names, their labels and docs/method.md sections on hover."""
    from specdyn.plots import style
    from specdyn.spectral.metrics import METRICS
    from specdyn.store.frames import store_metrics

    if not len(store):
        return ""
    names = store_metrics(store)
    values = {n: store.metric(n)[-1] for n in names}
    head = "<tr><th>matrix</th>" + "".join(
        f'<th title="{html.escape(METRICS[n].label)} ({html.escape(METRICS[n].doc)})">{n}</th>' for n in names
    )
    body = [
        f'<tr><td title="{html.escape(m)}">{html.escape(s)}</td>'
        + "".join(f"<td>{_f(values[n][j], '{:.4g}')}</td>" for n in names)
        + "</tr>"
        for j, (m, s) in enumerate(zip(store.matrices, style.shorten_names(store.matrices)))
    ]
    return (
        f"<details><summary>every metric at step {int(store.steps[-1])}</summary>"
        f'<table class="matrices">{head}</tr>{"".join(body)}</table></details>'
    )


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1500px;
padding:0 1.5em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
h3{margin:1.4em 0 .3em} .meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{padding:.2em .6em;text-align:left;
border-bottom:1px solid #eee} table.matrices td:nth-child(n+4){text-align:right;font-variant-numeric:tabular-nums}
tr.hot{background:#fff4e0} figure{margin:.4em 0 1.4em} figure img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.85em;max-width:60em} .note{color:#a00;font-size:.9em} nav a{margin-right:1em}
"""


def build_report(
    stores,
    title: str | None = None,
    dpi: int = REPORT_DPI,
    on_figure=None,
    conditions=None,
    interpolate_steps: bool = False,
) -> str:
    """The report's HTML for opened stores and conditions (`plots.groups.Condition`, seeds averaged);
    on_figure(job) is called after each figure (progress)."""
    from specdyn.plots.dispatch import make_figure
    from specdyn.plots.runlog import read_run_log, run_labels

    if not stores and not conditions:
        raise SpecdynError("no store given; pass one or more stores (or run dirs holding specdyn.zarr)")
    for st in stores:
        if len(st) == 0:
            raise SpecdynError(
                f"{st.path}: no completed checkpoints yet; run `specdyn analyze` on its run dir to finish it"
            )
    logs = [read_run_log(s) for s in stores]
    labels = run_labels(stores, logs)
    jobs = condition_jobs(conditions, interpolate_steps) + figure_jobs(stores, labels)
    title = title or ("specdyn report: " + ", ".join([c.name for c in conditions or []] + labels))
    sections: dict[str, list[str]] = {}
    if conditions:
        sections["Conditions"] = [
            "<p>" + "; ".join(f"{html.escape(c.name)}: {len(c.stores)} runs" for c in conditions) + "</p>"
        ]
    if len(stores) > 1:
        sections["Comparison"] = []
    for st, label, log in zip(stores, labels, logs):
        sections[label] = [store_table(st, label, log, interesting_matrices(st))]
    for job in jobs:
        try:
            fig = make_figure(job.kind, job.stores, **job.options)
        except SpecdynError as e:
            sections[job.section].append(
                f'<h3>{html.escape(job.heading)}</h3><p class="note">{html.escape(e.message)}</p>'
            )
        else:
            data, width = render_png(fig, dpi)
            sections[job.section].append(
                f'<h3>{html.escape(job.heading)}</h3><figure><img alt="{html.escape(job.kind)}: '
                f'{html.escape(job.heading)}" style="width:{width:.0f}px" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(job.caption)} <code>specdyn plot {html.escape(job.kind)}</code></figcaption></figure>"
            )
        if on_figure:
            on_figure(job)
    ids = {name: f"s{i}" for i, name in enumerate(sections)}
    nav = "".join(f'<a href="#{ids[n]}">{html.escape(n)}</a>' for n in sections)
    body = "".join(f'<h2 id="{ids[n]}">{html.escape(n)}</h2>{"".join(parts)}' for n, parts in sections.items())
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f'<h1>{html.escape(title)}</h1><p class="meta">specdyn {__version__}, {when}. Figures read the stores '
        f"only (and each run's training log); rerun <code>specdyn report</code> after <code>specdyn analyze</code> "
        f"adds checkpoints.</p><nav>{nav}</nav>{body}</body></html>\n"
    )


def count_figures(stores, conditions=None) -> int:
    from specdyn.plots.runlog import read_run_log, run_labels

    return len(condition_jobs(conditions)) + len(
        figure_jobs(stores, run_labels(stores, [read_run_log(s) for s in stores]))
    )
