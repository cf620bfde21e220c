"""Train a built-in task and write its checkpoint series (`specdyn train`), with the paper's branching.

A run directory holds one checkpoint per save plus `run.json` ({"task", "config", "history": one entry of
train/val metrics per save}), rewritten atomically after every save. Branches (docs/method.md 3) start from a
trunk checkpoint (`init_from`) with their own seed for the data order, optionally perturbed (norm-preserving
random noise) or masked (lottery tickets: a global magnitude mask from another checkpoint, re-applied to
weights and gradients at every step).

Determinism: on CPU, the same config, torch version and thread count give bit-identical checkpoints.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specdyn import branching
from specdyn.errors import SpecdynError
from specdyn.files import atomic_path
from specdyn.io.base import Saved
from specdyn.io.runmeta import write_run_info
from specdyn.tasks.base import BuiltinTask, config_dict, recalibrate
from specdyn.train_options import MASK_TYPES

SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SAVES = 20


# --- the save schedule ---------------------------------------------------------------------------------------


def save_steps(start: int, end: int, every: int | None = None, log: int | None = None) -> list[int]:
    """The steps at which a run from `start` to `end` saves; always includes both ends.

    `every`: the multiples of `every` in between. `log`: `log` points log-spaced over the steps after `start`
    (start + round(geomspace(1, end - start))), duplicates from rounding merged, so early training is dense.
    Neither: `every` = (end - start) / 20, rounded up.
    """
    if end < start:
        raise ValueError(f"end step {end} is before start step {start}")
    if every is not None and log is not None:
        raise ValueError("pass either every or log, not both")
    steps = {start, end}
    span = end - start
    if span == 0:
        return [start]
    if log is not None:
        if log < 1:
            raise ValueError(f"log must be >= 1, got {log}")
        for i in range(log):
            frac = i / (log - 1) if log > 1 else 1.0
            steps.add(start + round(span**frac))
    else:
        every = every if every is not None else max(1, math.ceil(span / DEFAULT_SAVES))
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        steps.update(range((start // every + 1) * every, end, every))
    return sorted(steps)


# --- writing checkpoints ---------------------------------------------------------------------------------------


def _storable(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state_dict.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous().clone()
    return out


def checkpoint_name(fmt: str, step: int, epoch: int = 0) -> str:
    """The file (or folder) name of the checkpoint at `step` in format `fmt` (a name in specdyn.io.FORMATS)."""
    return _writer(fmt).checkpoint_name(step, epoch)


def write_checkpoint(
    run_dir: Path,
    fmt: str,
    step: int,
    state_dict: dict[str, torch.Tensor],
    task_name: str,
    config: dict[str, Any],
    epoch: int = 0,
    history: list[dict] | None = None,
) -> Path:
    """Write one checkpoint through its format's writer (`specdyn.io.FORMATS`), atomically; returns its path."""
    writer = _writer(fmt)
    path = run_dir / writer.checkpoint_name(step, epoch)
    with atomic_path(path, folder=writer.writes_folder) as tmp:
        writer.write(tmp, Saved(state_dict, step, task_name, config, epoch, history))
    return path


def _writer(fmt: str):
    from specdyn.io import registry

    try:
        writer = registry.get_format(fmt)
    except KeyError:
        writer = None
    if writer is None or not writer.writable:
        raise SpecdynError(f"unknown --format {fmt!r}; one of {', '.join(registry.writable())}")
    return writer


# Everything a run writes; --overwrite removes exactly these (never other files a user keeps there).
_RUN_PATTERNS = ("step_*.safetensors", "step_*.pt", "epoch=*-step=*.ckpt", "last.ckpt", "checkpoint-*",
                 "optimizer", "run.json")  # fmt: skip


def _existing_run_files(run_dir: Path) -> list[Path]:
    return sorted({p for pattern in _RUN_PATTERNS for p in run_dir.glob(pattern)})


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to mix two runs unless `overwrite` (then remove the old run's files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = _existing_run_files(run_dir)
    if existing and not overwrite:
        raise SpecdynError(
            f"{run_dir} already holds a run ({existing[0].name}, ...); pass --overwrite to replace "
            "it or choose another --out"
        )
    for p in existing:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()  # a link goes, not what it leads to


# --- reading a trunk checkpoint --------------------------------------------------------------------------------


@dataclass
class Source:
    """A checkpoint to branch from: its weights, step and (where recorded) task and config."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    step: int | None
    task: str | None = None
    config: dict[str, Any] | None = None
    optimizer_path: Path | None = None


def read_task(path):
    """The checkpoint, and the (task, config) `specdyn train` recorded for it in any --format (or its run.json),
    read from metadata only: no tensor is loaded."""
    from specdyn.io import CheckpointReader, open_checkpoint
    from specdyn.io.runmeta import recorded_task

    ckpt = open_checkpoint(path)
    with CheckpointReader(ckpt) as reader:
        meta = reader.metadata()
    task, config = recorded_task(meta, ckpt.run_dir)
    return ckpt, task, config


def read_source(path) -> Source:
    """Read a checkpoint written by `specdyn train` (any --format) or any layout specdyn reads: its tensors, and
    the task and config from the safetensors metadata, HF config.json, Lightning hyper_parameters, or run.json.
    """
    from specdyn.io import CheckpointReader

    ckpt, task, config = read_task(path)
    with CheckpointReader(ckpt) as reader:
        state_dict = {name: reader.tensor(name) for name in reader.names()}
    if ckpt.format == "lightning" and state_dict and all(k.startswith("model.") for k in state_dict):
        state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}  # our LightningModule attribute
    step = ckpt.step
    optimizer_path = ckpt.run_dir / "optimizer" / f"step_{step:06d}.optim" if step is not None else None
    if optimizer_path is not None and not optimizer_path.is_file():
        optimizer_path = None
    return Source(ckpt.path, state_dict, step, task, config, optimizer_path)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: Path) -> None:
    """Load a checkpoint's tensors into `model`, upcast to the model's dtypes; a name or shape mismatch is a
    user error naming the checkpoint."""
    own = model.state_dict()
    missing = [n for n in own if n not in state_dict]
    unexpected = [n for n in state_dict if n not in own]
    if missing or unexpected:
        raise SpecdynError(
            f"{where} does not fit this task's model (missing: {missing[:3]}, unexpected: "
            f"{unexpected[:3]}); check the task and its config"
        )
    for name, t in own.items():
        if tuple(state_dict[name].shape) != tuple(t.shape):
            raise SpecdynError(
                f"{where}: {name} has shape {tuple(state_dict[name].shape)}, the model expects "
                f"{tuple(t.shape)}; check the task config"
            )
    model.load_state_dict({n: state_dict[n].to(own[n].dtype) for n in own})


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class Branch:
    """How a run departs from a fresh model: from a checkpoint, perturbed, and/or masked."""

    init_from: Source | None = None
    perturb_scale: float = 0.0
    mask_from: Source | None = None
    density: float | None = None
    mask_type: str = "magnitude"


@dataclass
class RunResult:
    run_dir: Path
    checkpoints: list[Path]
    history: list[dict]
    info: dict = field(default_factory=dict)


def _metrics_entry(step: int, task: BuiltinTask, model) -> dict:
    entry: dict[str, Any] = {"step": step}
    for split in ("train", "val"):
        for key, value in task.evaluate(model, split).items():
            entry[f"{split}_{key}"] = value
    return entry


def train(
    task: BuiltinTask,
    run_dir,
    *,
    every: int | None = None,
    log: int | None = None,
    fmt: str = "safetensors",
    save_dtype: str = "float32",
    branch: Branch | None = None,
    save_optimizer: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> RunResult:
    """Train `task` from its config (or a branch point) to `config.steps`, saving on the schedule.

    Steps count optimizer updates; the checkpoint at step s holds the weights after s updates (step 0 = the
    initialisation, or the branch point after its edits). Every save evaluates train and val in full.
    """
    fmt = _writer(fmt).name
    if save_dtype not in SAVE_DTYPES:
        raise SpecdynError(f"unknown --save-dtype {save_dtype!r}; one of {', '.join(SAVE_DTYPES)}")
    branch = branch or Branch()
    cfg = task.config
    run_dir = Path(run_dir)
    config = config_dict(cfg)

    model = task.build_model()
    start, masks, info = _branch_start(task, model, branch)
    if start >= cfg.steps:
        raise SpecdynError(
            f"the run starts at step {start} and config steps is {cfg.steps}: nothing to train; "
            f"pass --steps larger than {start}"
        )
    schedule = save_steps(start, cfg.steps, every=every, log=log)
    prepare_run_dir(run_dir, overwrite)

    optimizer = task.make_optimizer(model)
    if branch.init_from is not None and branch.init_from.optimizer_path is not None:
        optimizer.load_state_dict(torch.load(branch.init_from.optimizer_path, weights_only=True))
        info["init_from"]["optimizer"] = str(branch.init_from.optimizer_path)

    dtype = SAVE_DTYPES[save_dtype]
    spe = task.steps_per_epoch()
    history: list[dict] = []
    written: list[Path] = []
    run_info = {"task": task.name, "config": config, "history": history, "format": fmt, "save_dtype": save_dtype,
                "torch": torch.__version__, "threads": torch.get_num_threads(), **info}  # fmt: skip
    data_info = task.data_info()
    if data_info:
        run_info["data"] = data_info

    def save(step: int) -> None:
        history.append(_metrics_entry(step, task, model))
        sd = _storable(model.state_dict(), dtype)
        written.append(write_checkpoint(run_dir, fmt, step, sd, task.name, config, step // spe, history))
        if save_optimizer:
            with atomic_path(run_dir / "optimizer" / f"step_{step:06d}.optim") as tmp:
                torch.save(optimizer.state_dict(), tmp)
        write_run_info(run_dir, run_info)

    _train_loop(task, model, optimizer, masks, start, set(schedule), save, show_progress, history, run_dir)
    if fmt == "lightning":
        with atomic_path(run_dir / "last.ckpt") as tmp:  # as Lightning's save_last does
            shutil.copyfile(written[-1], tmp)
    return RunResult(run_dir, written, history, info)


def _branch_start(task: BuiltinTask, model, branch: Branch) -> tuple[int, dict, dict]:
    """Put the model at its starting point: the trunk's weights for a branch, then its edits (a norm-preserving
    perturbation, a lottery mask). Returns the start step, the masks to keep applying, and what was done."""
    cfg, start, info = task.config, 0, {}
    if branch.init_from is not None:
        src = branch.init_from
        load_weights(model, src.state_dict, src.path)
        start = src.step or 0
        info["init_from"] = {"path": str(src.path), "step": start}
    edited = False
    if branch.perturb_scale:
        g = torch.Generator().manual_seed(cfg.seed)
        branching.perturb_(model, branching.branch_names(model), branch.perturb_scale, g)
        info["perturb"] = {"scale": branch.perturb_scale, "seed": cfg.seed}
        edited = True
    masks: dict[str, torch.Tensor] = {}
    if branch.mask_from is not None:
        masks = _make_masks(model, branch, cfg.seed)
        branching.apply_masks_(model, masks)
        info["mask"] = {"from": str(branch.mask_from.path), "step": branch.mask_from.step, "type": branch.mask_type,
                        "density": branch.density, "kept_fraction": branching.mask_density(masks),
                        "kept": sum(int(m.sum()) for m in masks.values())}  # fmt: skip
        edited = True
    if edited:
        recalibrate(task, model)
    return start, masks, info


def _train_loop(task, model, optimizer, masks, start: int, save_at: set, save, show_progress: bool, history, run_dir):
    """Optimizer steps from `start` to the config's steps, calling save(step) at each step in `save_at`."""
    cfg = task.config
    spe = task.steps_per_epoch()
    model.train()
    with _progress(show_progress, task.name, start, cfg.steps) as advance:
        save(start)
        step = start
        epoch, batches = step // spe, None
        while step < cfg.steps:
            if batches is None:
                batches = task.train_batches(epoch)
            batch = batches[step % spe]
            for group in optimizer.param_groups:
                group["lr"] = task.lr_at(step)
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if masks:
                branching.mask_grads_(model, masks)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if masks:
                branching.apply_masks_(model, masks)
            step += 1
            if step % spe == 0:
                epoch, batches = epoch + 1, None
            value = loss.item()
            if not math.isfinite(value):
                raise SpecdynError(
                    f"{task.name}: the training loss became {value} at step {step}; lower --lr "
                    f"(checkpoints up to step {history[-1]['step']} are in {run_dir})"
                )
            if step in save_at:
                save(step)
            advance(value, history[-1])


def _make_masks(model, branch: Branch, seed: int) -> dict[str, torch.Tensor]:
    if branch.density is None:
        raise SpecdynError("a mask needs --density (the fraction of weights kept, e.g. 0.05)")
    if branch.mask_type not in MASK_TYPES:
        raise SpecdynError(f"unknown --mask-type {branch.mask_type!r}; one of {', '.join(MASK_TYPES)}")
    src = branch.mask_from
    names = branching.matrix_names(model)
    own = dict(model.named_parameters())
    for n in names:
        if n not in src.state_dict or tuple(src.state_dict[n].shape) != tuple(own[n].shape):
            raise SpecdynError(f"{src.path} does not fit this task's model at {n}; masks need the same architecture")
    try:
        masks = branching.global_magnitude_mask({n: src.state_dict[n] for n in names}, branch.density)
    except ValueError as e:
        raise SpecdynError(f"--mask-from {src.path}: {e}") from None
    if branch.mask_type == "random":
        masks = branching.random_mask_like(masks, torch.Generator().manual_seed(seed))
    return masks


class _progress:
    """A rich progress bar over training steps (stderr), or nothing."""

    def __init__(self, show: bool, name: str, start: int, end: int):
        self.show, self.name, self.start, self.end = show, name, start, end

    def __enter__(self):
        if not self.show:
            return lambda loss, last: None
        from specdyn.console import progress

        self._bar = progress()
        self._bar.__enter__()
        tid = self._bar.add_task(f"train {self.name}", total=self.end - self.start)

        def advance(loss: float, last: dict) -> None:
            val = f" val_err {last['val_err']:.3f}" if "val_err" in last else f" val_loss {last['val_loss']:.3f}"
            self._bar.update(tid, advance=1, description=f"train {self.name} loss {loss:.3g}{val}")

        return advance

    def __exit__(self, *exc):
        if self.show:
            self._bar.__exit__(*exc)
        return False
