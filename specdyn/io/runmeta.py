"""Run metadata, owned here alone: `run.json` (what `specdyn train` records), the task a checkpoint records in its
own metadata, and the training logs next to a series (plots only ever read them).

run.json: {"task": name, "config": {...}, "history": [{"step", "train_loss", "train_err", "val_loss", "val_err"}],
"format", "init_from", "mask", ...}; error keys are absent for tasks without an error rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.io.base import write_json

RUN_JSON = "run.json"
HISTORY_KEYS = ("train_loss", "val_loss", "train_err", "val_err")


def read_run_info(run_dir: Path) -> dict:
    """The run.json of a run dir; {} if there is none, a one-line error if it is not JSON."""
    f = Path(run_dir) / RUN_JSON
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except ValueError:
        raise SpecdynError(f"{f}: not valid JSON; fix or remove it") from None
    return data if isinstance(data, dict) else {}


def write_run_info(run_dir: Path, info: dict) -> None:
    write_json(Path(run_dir) / RUN_JSON, info)


def recorded_task(metadata: dict, run_dir: Path) -> tuple[object, object]:
    """The (task, config) `specdyn train` recorded, from a checkpoint's metadata in any format it writes, else
    from the run's run.json; (None, None) when nothing records one."""
    config = metadata.get("config")
    if isinstance(config, dict) and "specdyn_task" in config:  # hf: config.json
        config = dict(config)
        task = config.pop("specdyn_task")
        config.pop("num_attention_heads", None)
        return task, config
    hparams = metadata.get("hyper_parameters")
    if isinstance(hparams, dict) and "task" in hparams:  # lightning: hyper_parameters
        config = dict(hparams)
        return config.pop("task"), config
    if isinstance(config, dict) and isinstance(metadata.get("task"), str):  # safetensors metadata
        return metadata["task"], config
    info = read_run_info(run_dir)
    return info.get("task"), info.get("config")


@dataclass
class RunLog:
    """A run's training curves by step, and what it trained."""

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


def read_run_log(run_dirs: list[Path]) -> RunLog:
    """The run.json histories of these run dirs merged by step (an empty RunLog when there is none); an
    unreadable log is a warning, never an error: it only means no loss curves."""
    from specdyn.console import warn

    log, rows = RunLog(), {}
    for run_dir in run_dirs:
        path = Path(run_dir) / RUN_JSON
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
            for h in doc.get("history", []):
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
