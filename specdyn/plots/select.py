"""What a figure shows: the checkpoints (`--steps`, `--x`), matrices (`--matrices`, `--matrix`), pairs and
metrics, checked against each store with one-line errors that name the store and list what it has."""

import difflib
import fnmatch
from dataclasses import dataclass

import numpy as np

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.plots import style
from specdyn.plots.runlog import RunLog, read_run_log, run_labels
from specdyn.selection import parse_steps
from specdyn.store import METRICS, SpectralStore


@dataclass
class Run:
    """One store and the checkpoint rows a figure shows, with their x positions."""

    store: SpectralStore
    rows: np.ndarray  # indices into the store's completed checkpoints
    steps: np.ndarray
    x: np.ndarray
    label: str
    log: RunLog
    by_index: bool = False  # x is the checkpoint index, not the step

    def metric(self, name: str) -> np.ndarray:
        """(checkpoint, matrix) over the selected checkpoints."""
        return self.store.metric(name)[self.rows]

    def history(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """A logged curve on this figure's x axis, within the selected steps (index mode interpolates the
        logged steps between checkpoint indices)."""
        if not self.log.has(key):
            return np.zeros(0), np.zeros(0)
        s, y = self.log.history["step"], self.log.history[key]
        keep = (s >= self.steps[0]) & (s <= self.steps[-1]) & np.isfinite(y)
        s, y = s[keep], y[keep]
        return (np.interp(s, self.steps, self.x) if self.by_index else s), y


def prepare(stores: list[SpectralStore], steps: str | None = None, x: str = "step", log_x: str = "auto"):
    """The Runs of a figure (one per store, `--steps a:b` applied) and their shared x axis."""
    if not stores:
        raise SpecdynError("no store given; pass one or more stores (or run dirs holding specdyn.zarr)")
    lo, hi = parse_steps(steps) if steps else (None, None)
    logs = [read_run_log(s) for s in stores]
    labels = run_labels(stores, logs)
    runs = []
    for st, label, log in zip(stores, labels, logs):
        all_steps = st.steps
        if len(all_steps) == 0:
            raise SpecdynError(
                f"{st.path}: no completed checkpoints yet; run `specdyn analyze` on its run dir to finish it"
            )
        keep = np.ones(len(all_steps), bool)
        if lo is not None:
            keep &= all_steps >= lo
        if hi is not None:
            keep &= all_steps <= hi
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            raise SpecdynError(
                f"{st.path}: --steps {steps} selects none of its {len(all_steps)} checkpoints "
                f"(steps {all_steps[0]}..{all_steps[-1]})"
            )
        sel = all_steps[rows]
        runs.append(
            Run(st, rows, sel, rows.astype(float) if x == "index" else sel.astype(float), label, log, x == "index")
        )
    axis = style.XAxis.build([r.steps for r in runs], x, log_x)
    return runs, axis


# ------------------------------------------------------------------------------------------- matrices and pairs


def _has_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def pick(names: list[str], patterns: list[str] | None, what: str, store, labels: list[str] | None = None) -> list[str]:
    """The names matching any glob (or exact name, or the short label figures show), in store order; all when
    no pattern."""
    if not patterns:
        return list(names)
    short = dict(zip(labels or style.shorten_names(names), names))
    chosen = set()
    for p in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, p)]
        label = p.replace("->", "→")
        if not hit and label in short:
            hit = [short[label]]
        if not hit and what == "matrix" and not _has_glob(p):
            hit = [store.check_matrix(p)]  # a short form naming one matrix (an ambiguous one says so)
        if not hit:
            if _has_glob(p):
                raise SpecdynError(f"{store.path}: no {what} matches {p!r}; {_listing(p, names)}")
            raise SpecdynError(f"{store.path}: no {what} {p!r}; {_listing(p, names)}")
        chosen.update(hit)
    return [n for n in names if n in chosen]


def _listing(p: str, names: list[str]) -> str:
    near = difflib.get_close_matches(p, names, n=3, cutoff=0.4)
    if near:
        return "did you mean " + ", ".join(repr(n) for n in near) + "?"
    return f"it has {len(names)}: " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")


def matrices(run: Run, patterns: list[str] | None) -> list[str]:
    return pick(run.store.matrices, patterns, "matrix", run.store)


def default_matrix(store) -> str:
    """The matrix single-matrix figures show by default: the first attention in-projection (the paper's
    grokking figure), else the middle matrix in depth order (its Fig. 3)."""
    names = store.matrices
    for n in names:
        if store.matrix_spec(n).kind == "attention_in_proj":
            return n
    return names[len(names) // 2]


def one_matrix(run: Run, name: str | None) -> str:
    if name is None:
        return default_matrix(run.store)
    return pick(run.store.matrices, [name], "matrix", run.store)[0] if _has_glob(name) else _exact(run, name)


def _exact(run: Run, name: str) -> str:
    return run.store.check_matrix(name)  # a full name, a figure label or a short form naming one matrix


def pair_specs(store) -> list[dict]:
    return store.pair_docs()


def require_pairs(run: Run) -> list[dict]:
    specs = pair_specs(run.store)
    if not specs:
        raise SpecdynError(
            f"{run.store.path}: no alignment pairs in this store (no neighbouring matrices chain by shape); "
            "list them with `specdyn analyze --pairs FILE`"
        )
    return specs


def pairs(run: Run, patterns: list[str] | None) -> list[str]:
    specs = require_pairs(run)
    names = [p["name"] for p in specs]
    return pick(names, patterns, "pair", run.store, style.shorten_pairs(specs, run.store.matrices))


def default_pair(store) -> str:
    """The embedding -> first attention pair when there is one (the paper's grokking figure), else the
    middle pair."""
    specs = pair_specs(store)
    for p in specs:
        if p["kind"] == "embedding":
            return p["name"]
    return specs[len(specs) // 2]["name"]


def one_pair(run: Run, name: str | None) -> str:
    require_pairs(run)
    if name is None:
        return default_pair(run.store)
    specs = pair_specs(run.store)
    labels = style.shorten_pairs(specs, run.store.matrices)
    return pick([p["name"] for p in specs], [name], "pair", run.store, labels)[0]


# ------------------------------------------------------------------------------------------- metrics and counts


def check_metric(name: str, allowed=METRICS) -> str:
    if name not in allowed:
        near = difflib.get_close_matches(name, list(allowed), n=3, cutoff=0.5)
        hint = ("did you mean " + ", ".join(near) + "? ") if near else ""
        raise SpecdynError(f"unknown metric {name!r}; {hint}known: {', '.join(allowed)}", code=EXIT_USAGE)
    return name


def check_panels(n: int, what: str) -> None:
    if n > style.MAX_PANELS:
        raise SpecdynError(
            f"{what}: {n} panels, more than the {style.MAX_PANELS} one figure holds; narrow the selection "
            "(--matrices, --matrix, --pair) or pass fewer stores"
        )


def single(value, flag: str, kind: str):
    """The one value of a repeatable option that this figure kind takes once."""
    if isinstance(value, (list, tuple)):
        if len(value) > 1:
            raise SpecdynError(f"{flag}: `{kind}` shows one; got {len(value)} ({', '.join(value)})", code=EXIT_USAGE)
        return value[0] if value else None
    return value


def check_top(top: int | None) -> None:
    if top is not None and top < 1:
        raise SpecdynError(f"--top {top}: must be a positive number of singular values", code=EXIT_USAGE)


# ------------------------------------------------------------------------------------------- evaluation results


def eval_group(store, name: str, missing: str | None = None) -> bool:
    """Whether the store holds the `evals/<name>` group of a model-based evaluation; with `missing` (what to run
    first), a SpecdynError saying so when it does not."""
    from specdyn.store.results import has_group

    if has_group(store.path, f"evals/{name}"):
        return True
    if missing:
        raise SpecdynError(f"{store.path}: {missing}")
    return False
