"""Run metadata, owned here alone: `run.json` (what `specdyn train` records), the task a checkpoint records in its
own metadata, and the training logs next to a series (plots and the report only ever read them, through
`read_run_log`): run.json, HF Trainer's trainer_state.json, Lightning's metrics.csv, TensorBoard event files.

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
        data = load_json(f)
    except (ValueError, UnicodeDecodeError):
        raise SpecdynError(f"{f}: not valid JSON; fix or remove it") from None
    return data if isinstance(data, dict) else {}


def load_json(path: Path):
    """A JSON file; nesting too deep to parse (json recurses) is a ValueError like any other malformed file."""
    try:
        return json.loads(Path(path).read_text())
    except RecursionError:
        raise ValueError("nested too deeply") from None


def training_step(v) -> int | None:
    """A logged step as an int, or None where it is not one (Infinity, 1e400, -1, 2.5, 10**400, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not (np.isfinite(v) and v.is_integer()):
        return None
    return int(v) if 0 <= v < 2**63 else None


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


# Training logs specdyn reads, in the order a curve is taken from (the first log that has it wins).
LOG_SOURCES = ("run.json", "trainer_state.json", "metrics.csv", "TensorBoard")
# A curve's canonical key -> the names the libraries log it under, by preference (HF Trainer's log_history uses
# `loss`/`eval_loss`; its TensorBoard callback `train/loss`/`eval/loss`; Lightning whatever `self.log` was given).
LOGGED_NAMES = {
    "train_loss": ("train_loss", "loss", "train/loss", "training_loss", "train_loss_step", "train/loss_step",
                   "loss_step", "train_loss_epoch"),
    "val_loss": ("val_loss", "eval_loss", "eval/loss", "val/loss", "valid_loss", "validation_loss",
                 "val_loss_epoch"),
    "train_err": ("train_err", "train_error", "train/err", "train/error"),
    "val_err": ("val_err", "val_error", "eval_err", "eval_error", "eval/err", "val/err"),
    "learning_rate": ("learning_rate", "lr", "train/learning_rate", "train/lr"),
}  # fmt: skip
CURVES = (*HISTORY_KEYS, "learning_rate")


@dataclass
class RunLog:
    """A run's training curves by step, and what it trained. `names` keeps the name each curve was logged under
    (`eval_loss`) and `sources` the files read, so figures label curves as the user logged them."""

    task: str | None = None
    config: dict = field(default_factory=dict)
    history: dict[str, np.ndarray] = field(default_factory=dict)  # "step" and the CURVES present in the log
    names: dict[str, str] = field(default_factory=dict)  # curve -> logged name, for logs not written by specdyn
    sources: list[str] = field(default_factory=list)  # the log files the curves came from

    def has(self, key: str) -> bool:
        return key in self.history and np.isfinite(self.history[key]).any()

    def final(self, key: str) -> float | None:
        if not self.has(key):
            return None
        v = self.history[key]
        return float(v[np.isfinite(v)][-1])

    def label(self, key: str, default: str) -> str:
        """The logged name of a curve read from another library's log, else `default`."""
        return self.names.get(key, default)


Curves = dict[str, tuple[str, dict[int, float]]]  # curve -> (logged name, {step: value})


def read_run_log(run_dirs: list[Path], checkpoints: list[Path] | None = None) -> RunLog:
    """The training curves of these run dirs merged by step (an empty RunLog when there is none), from specdyn's
    run.json, else the HF Trainer's trainer_state.json (of the last of `checkpoints` that has one, else the run
    dir's), Lightning's CSVLogger metrics.csv, or TensorBoard event files (with the `tensorboard` package).
    An unreadable log is a warning, never an error: it only means no loss curves."""
    log, found = RunLog(), []  # found: (source, Curves, foreign) in LOG_SOURCES order
    own: Curves = {}  # every run dir's run.json, merged by step
    for run_dir in run_dirs:
        curves, task, config = _run_json(Path(run_dir))
        for key, (name, values) in curves.items():
            own.setdefault(key, (name, {}))[1].update(values)
        if curves:
            log.sources.append(str(Path(run_dir) / RUN_JSON))
        log.task = log.task or task
        log.config = log.config or config
    if own:
        found.append((None, own, False))
    for reader in (_trainer_state, _lightning_csv, _tensorboard):
        for path, curves in reader([Path(d) for d in run_dirs], [Path(c) for c in checkpoints or []]):
            found.append((str(path), curves, True))
    merged: dict[int, dict[str, float]] = {}
    for path, curves, foreign in found:
        fresh = {k: v for k, v in curves.items() if k not in log.names and not any(k in r for r in merged.values())}
        if not fresh:
            continue
        if path is not None:
            log.sources.append(path)
        for key, (name, values) in fresh.items():
            if foreign:
                log.names[key] = name
            for step, v in values.items():
                merged.setdefault(step, {})[key] = v
    if merged:
        steps = sorted(merged)
        log.history["step"] = np.array(steps, dtype=float)
        for key in CURVES:
            if any(key in merged[s] for s in steps):
                log.history[key] = np.array([merged[s].get(key, np.nan) for s in steps], dtype=float)
    return log


def _unreadable(path: Path, e: Exception) -> None:
    from specdyn.console import warn

    warn(f"{path}: unreadable training log ({type(e).__name__}: {e}); plotting without its curves")


def _run_json(run_dir: Path) -> tuple[Curves, str | None, dict]:
    path = run_dir / RUN_JSON
    if not path.is_file():
        return {}, None, {}
    curves: Curves = {}
    try:
        doc = load_json(path)
        for h in doc.get("history", []):
            step = training_step(h["step"])
            if step is None:
                raise ValueError(f"step {str(h['step'])[:40]} is not a training step")
            for key in HISTORY_KEYS:
                if key in h:
                    curves.setdefault(key, (key, {}))[1][step] = _num(h[key])
        task = doc.get("task")
        return curves, task if isinstance(task, str) else None, dict(doc.get("config") or {})
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        _unreadable(path, e)
        return {}, None, {}


def _canonical(columns) -> dict[str, str]:
    """curve -> the column holding it, by the preference order of LOGGED_NAMES."""
    columns = set(columns)
    out = {}
    for key, names in LOGGED_NAMES.items():
        name = next((n for n in names if n in columns), None)
        if name is not None:
            out[key] = name
    return out


def _from_rows(rows: list[dict], step_key: str = "step") -> Curves:
    """Curves from log records ({step, name: value, ...}); records without a step are left out."""
    curves: Curves = {}
    columns = {k for r in rows for k in r if k != step_key}
    for key, name in _canonical(columns).items():
        values = {}
        for r in rows:
            v, step = _num(r.get(name)), training_step(_num(r.get(step_key)))
            if np.isfinite(v) and step is not None:
                values[step] = v
        if values:
            curves[key] = (name, values)
    return curves


def _inside(path: Path) -> bool:
    """Whether a log file leads (after symlinks) only into its own folder, or a hub snapshot's blobs/ (io.hf)."""
    from specdyn.errors import CheckpointError
    from specdyn.io.hf import check_inside

    try:
        check_inside(path, path.parent, path.name)
        return True
    except CheckpointError as e:
        from specdyn.console import warn

        warn(f"{e}; not read", kind="files outside their checkpoint")
        return False


def _trainer_state(run_dirs: list[Path], checkpoints: list[Path]):
    """HF Trainer's log_history, from the last checkpoint that holds trainer_state.json (it holds every record up
    to its step), else from a run dir's own trainer_state.json (written by `trainer.save_state()`)."""
    candidates = [c / "trainer_state.json" for c in reversed(checkpoints)] + [
        d / "trainer_state.json" for d in run_dirs
    ]
    path = next((p for p in candidates if p.is_file() and _inside(p)), None)
    if path is None:
        return
    try:
        history = load_json(path).get("log_history") or []
        if not isinstance(history, list):
            raise ValueError("log_history is not a list of records")
        # the closing record's `train_loss` is the mean over all of training, not the loss at its step
        rows = [h for h in history if isinstance(h, dict) and "train_runtime" not in h]
    except (OSError, ValueError, AttributeError) as e:
        _unreadable(path, e)
        return
    curves = _from_rows(rows)
    if curves:
        yield path, curves


def _log_dirs(run_dirs: list[Path]) -> list[Path]:
    """Where loggers write next to a series: the run dir, Lightning's `lightning_logs/version_N/` inside it, the
    version folder above a `checkpoints/` run dir, and HF's `runs/<date>/` TensorBoard folders."""
    out = []
    for d in run_dirs:
        out.append(d)
        if d.name == "checkpoints":
            out.append(d.parent)
        for pattern in ("lightning_logs/version_*", "runs/*", "logs/*", "*/version_*"):
            out += sorted(p for p in d.glob(pattern) if p.is_dir())
    return list(dict.fromkeys(out))


def _lightning_csv(run_dirs: list[Path], checkpoints: list[Path]):
    import csv

    for folder in _log_dirs(run_dirs):
        path = folder / "metrics.csv"
        if not path.is_file():
            continue
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            _unreadable(path, e)
            continue
        curves = _from_rows(rows)
        if curves:
            yield path, curves


def _tensorboard(run_dirs: list[Path], checkpoints: list[Path]):
    folders = [f for f in _log_dirs(run_dirs) if any(f.glob("events.out.tfevents.*"))]
    if not folders:
        return
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        from specdyn.console import warn

        warn(f"{folders[0]}: TensorBoard event files are not read without the tensorboard package "
             "(pip install 'specdyn[tensorboard]')")  # fmt: skip
        return
    for folder in folders:
        try:
            acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            acc.Reload()
            tags = acc.Tags().get("scalars", [])
            rows = [{"step": e.step, tag: e.value} for tag in tags for e in acc.Scalars(tag)]
        except Exception as e:  # a truncated or foreign event file: no curves from it
            _unreadable(folder, e)
            continue
        curves = _from_rows(rows)
        if curves:
            yield folder, curves


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):  # 10**400 in a JSON log is an int no float holds
        return float("nan")
