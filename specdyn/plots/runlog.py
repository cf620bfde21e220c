"""A store's training log (run.json, trainer_state.json, metrics.csv or TensorBoard, read by `specdyn.io.runmeta`)
and legend labels that tell runs apart.

A store merged from several run dirs merges their histories by step; a missing or unreadable log just means no
loss curves.
"""

import json
from pathlib import Path

from specdyn.io import runmeta
from specdyn.io.runmeta import HISTORY_KEYS, RunLog

__all__ = ["HISTORY_KEYS", "RunLog", "read_run_log", "run_labels", "store_name"]

# Config keys that say where or how often, not what was trained: never used to tell runs apart in a legend.
_BOOKKEEPING = ("dir", "path", "device", "every", "log", "save", "workers", "compile", "progress", "out")


def read_run_log(store) -> RunLog:
    """The merged training log of a store's run dirs (an empty RunLog when there is none)."""
    return runmeta.read_run_log(store.run_dirs, store.checkpoint_paths())


def store_name(store) -> str:
    """The run's folder name for the default store (`run/specdyn.zarr`), else the store's own name (as UTF-8
    text: a name that is not UTF-8 shows its bytes as \\xHH)."""
    from specdyn.files import name_text

    p = Path(store.path).resolve()
    return name_text(p.parent.name if p.name == "specdyn.zarr" else (p.stem if p.suffix == ".zarr" else p.name))


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
        from specdyn.files import name_text

        names = [f"{name_text(Path(s.path).resolve().parent.parent.name)}/{n}" for s, n in zip(stores, names)]
    if len(stores) < 2 or logs is None or not all(l.config for l in logs):
        return names
    keys = sorted(set().union(*(l.config for l in logs)))
    differ = [
        k
        for k in keys
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
