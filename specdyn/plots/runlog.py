"""A run's training log (`run.json`, written by `specdyn train`) next to its store, and legend labels.

run.json: {"task": name, "config": {...}, "history": [{"step", "train_loss", "train_err", "val_loss", "val_err"}]}
(error keys absent for tasks without an error rate). A store merged from several run dirs merges their
histories by step. Plots only ever read it; a missing or unreadable log just means no loss curves.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HISTORY_KEYS = ("train_loss", "val_loss", "train_err", "val_err")
# Config keys that say where or how often, not what was trained: never used to tell runs apart in a legend.
_BOOKKEEPING = ("dir", "path", "device", "every", "log", "save", "workers", "compile", "progress", "out")


@dataclass
class RunLog:
    task: str | None = None
    config: dict = field(default_factory=dict)
    history: dict[str, np.ndarray] = field(default_factory=dict)  # "step" and HISTORY_KEYS present in the log

    def has(self, key: str) -> bool:
        return key in self.history and np.isfinite(self.history[key]).any()

    def final(self, key: str) -> float | None:
        if not self.has(key):
            return None
        v = self.history[key]
        return float(v[np.isfinite(v)][-1])


def read_run_log(store) -> RunLog:
    """The merged run.json of a store's run dirs (an empty RunLog when there is none)."""
    from specdyn.console import warn

    log, rows = RunLog(), {}
    for run_dir in store.run_dirs:
        path = Path(run_dir) / "run.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
            entries = doc.get("history", [])
            for h in entries:
                rows[int(h["step"])] = {**rows.get(int(h["step"]), {}), **h}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            warn(f"{path}: unreadable training log ({type(e).__name__}: {e}); plotting without loss curves")
            continue
        log.task = log.task or doc.get("task")
        log.config = log.config or dict(doc.get("config") or {})
    if rows:
        steps = sorted(rows)
        log.history["step"] = np.array(steps, dtype=float)
        for key in HISTORY_KEYS:
            if any(key in rows[s] for s in steps):
                log.history[key] = np.array([_num(rows[s].get(key)) for s in steps])
    return log


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def store_name(store) -> str:
    """The run's folder name for the default store (`run/specdyn.zarr`), else the store's own name."""
    p = Path(store.path).resolve()
    return p.parent.name if p.name == "specdyn.zarr" else (p.stem if p.suffix == ".zarr" else p.name)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)


def run_labels(stores, logs: list[RunLog] | None = None) -> list[str]:
    """One legend label per store: the config values that differ between the runs (e.g. `weight_decay=1`),
    when the runs have configs and that tells them apart; otherwise the run folder names (made unique)."""
    names = [store_name(s) for s in stores]
    if len(set(names)) < len(names):
        names = [f"{Path(s.path).resolve().parent.parent.name}/{n}" for s, n in zip(stores, names)]
    if len(stores) < 2 or logs is None or not all(l.config for l in logs):
        return names
    keys = sorted(set().union(*(l.config for l in logs)))
    differ = [
        k for k in keys
        if not any(b in k for b in _BOOKKEEPING)
        and len({json.dumps(l.config.get(k), sort_keys=True) for l in logs}) > 1
    ]
    tasks = {l.task for l in logs}
    if not differ or len(differ) > 3:
        return names
    labels = [", ".join(f"{k}={_fmt(l.config.get(k))}" for k in differ) for l in logs]
    if len(tasks) > 1:
        labels = [f"{l.task}: {lab}" for l, lab in zip(logs, labels)]
    return labels if len(set(labels)) == len(labels) else names
