"""The task protocol every evaluation relies on, and the shared machinery of the built-in training tasks.

A *task* is a model, its data and its evaluation. The protocol below is all that model-based evaluations
(pruning, interpolation, lottery) need, so a user task loaded from `path/file.py:object` implements only it.
The built-in tasks (`specdyn train TASK`) subclass `BuiltinTask`, which adds what training needs: a config
dataclass with defaults, a loss, an optimizer and a learning-rate schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class Task(Protocol):
    """What specdyn needs from a task (built-in or user-supplied).

    - `name`: a short identifier, stored in checkpoint metadata.
    - `build_model()`: a fresh model for this task's config (same architecture every call; weights are then
      loaded from a checkpoint).
    - `batches(split)`: for split "train" or "val", a finite, deterministic iterable of batches (the same
      batches in the same order on every call; each batch is a tuple whose first element is the model input,
      which is what the default BatchNorm recalibration feeds to the model).
    - `evaluate(model, split)`: {"loss": ..., "err": ...} ("err" where meaningful), means weighted by
      examples, computed in eval mode without gradients.

    Optional: `recalibrate(model)` re-estimates normalization statistics after weights are edited (pruned,
    interpolated, perturbed). Without it, specdyn calls `recalibrate_bn(model, task.batches("train"))`
    when the model has BatchNorm layers, and does nothing otherwise.
    """

    name: str

    def build_model(self) -> nn.Module: ...

    def batches(self, split: str) -> Iterable: ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...


SPLITS = ("train", "val")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> None:
    """Re-estimate BatchNorm running statistics as a cumulative average over `batches` (docs/method.md 1.9).

    Uses `torch.optim.swa_utils.update_bn`, which feeds the first element of each tuple batch to the model.
    A no-op for models without BatchNorm (GroupNorm and LayerNorm keep no running statistics).
    """
    if has_batchnorm(model):
        torch.optim.swa_utils.update_bn(batches, model)


def recalibrate(task: Task, model: nn.Module) -> None:
    """The task's own `recalibrate(model)` when it has one, else the BatchNorm default."""
    custom = getattr(task, "recalibrate", None)
    if callable(custom):
        custom(model)
    elif has_batchnorm(model):
        recalibrate_bn(model, task.batches("train"))


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with torch's global CPU RNG seeded with `seed`, restoring the caller's RNG state after.

    Module constructors draw initial weights from the global RNG; this keeps `build_model()` reproducible
    without disturbing anyone else's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclasses.dataclass
class TrainConfig:
    """Hyperparameters shared by every built-in task; each task's Config subclasses it with its defaults.

    `seed` sets the model initialisation and the order of training batches (a branch passes its own seed);
    `data_seed` sets the synthetic data and the train/val split, which therefore stay fixed across seeds and
    branches (the paper's modadd split followed the run seed; we keep it fixed so branches share the data).
    """

    seed: int = 0
    data_seed: int = 0
    steps: int = 1000
    batch_size: int = 128  # 0 = full batch
    optimizer: str = "adamw"  # "adamw" (decoupled weight decay) | "sgd" (coupled L2, momentum)
    lr: float = 1e-3
    weight_decay: float = 0.0  # applied to all parameters, as in the paper
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    schedule: str = "constant"  # "constant" | "cosine" (linear warmup, then cosine to min_lr_ratio)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0  # max global grad norm; 0 = off


class BuiltinTask:
    """Base class of the built-in tasks: config handling, batching, optimizer, schedule and evaluation.

    Subclasses set `name`, `Config` and `has_error`, and implement `make_data()` (returning a dict
    split -> tuple of tensors with examples along dim 0), `build_model()` and `batch_loss(model, batch)`
    (returning per-example losses and, when `has_error`, per-example 0/1 errors).
    """

    name: ClassVar[str]
    Config: ClassVar[type[TrainConfig]] = TrainConfig
    has_error: ClassVar[bool] = True
    eval_batch_size: ClassVar[int] = 1024
    eval_train_subset: ClassVar[int | None] = None  # evaluate "train" on a fixed random subset of this size

    def __init__(self, config: TrainConfig | None = None):
        self.config = config if config is not None else self.Config()
        self._data: dict[str, tuple[torch.Tensor, ...]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # ----- data -----
    def make_data(self) -> dict[str, tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def data(self, split: str) -> tuple[torch.Tensor, ...]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self._data is None:
            self._data = self.make_data()
        return self._data[split]

    def data_info(self) -> dict:
        """Facts about the data worth recording in run.json (e.g. a corpus digest); none by default."""
        return {}

    def n_examples(self, split: str) -> int:
        return len(self.data(split)[0])

    def batches(self, split: str) -> list[tuple[torch.Tensor, ...]]:
        """The split in its stored order, in chunks of `eval_batch_size` (full batch when batch_size is 0).

        With `eval_train_subset`, "train" is a fixed subset drawn with seed 12345 (as the paper's LM eval).
        """
        tensors = self.data(split)
        n = len(tensors[0])
        if split == "train" and self.eval_train_subset and self.eval_train_subset < n:
            keep = torch.randperm(n, generator=torch.Generator().manual_seed(12345))[: self.eval_train_subset]
            tensors = tuple(t[keep.sort().values] for t in tensors)
        size = self.eval_batch_size if self.config.batch_size else len(tensors[0])
        return [tuple(t[i : i + size] for t in tensors) for i in range(0, len(tensors[0]), size)]

    def train_batches(self, epoch: int) -> list[tuple[torch.Tensor, ...]]:
        """One epoch of training batches, shuffled with seed + 1 + epoch (as the paper reseeds per epoch).

        Full batch (batch_size 0) is one unshuffled batch. A last partial batch is dropped, so every step
        sees `batch_size` examples.
        """
        tensors = self.data("train")
        n = len(tensors[0])
        if not self.config.batch_size or self.config.batch_size >= n:
            return [tensors]
        g = torch.Generator().manual_seed(self.config.seed + 1 + epoch)
        order = torch.randperm(n, generator=g)
        b = self.config.batch_size
        return [tuple(t[order[i : i + b]] for t in tensors) for i in range(0, n - b + 1, b)]

    def steps_per_epoch(self) -> int:
        n = self.n_examples("train")
        b = self.config.batch_size
        return 1 if not b or b >= n else n // b

    # ----- model and loss -----
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def batch_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example losses (B,) and per-example errors (B,) or None."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """The scalar training loss of one batch."""
        return self.batch_loss(model, batch)[0].mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Example-weighted mean loss (and error) over the whole split, in eval mode.

        The paper averaged batch means, over-weighting a last partial batch (docs/method.md 0); we weight examples.
        """
        was_training = model.training
        model.eval()
        total, loss_sum, err_sum = 0, 0.0, 0.0
        try:
            for batch in self.batches(split):
                losses, errs = self.batch_loss(model, batch)
                total += losses.numel()
                loss_sum += losses.double().sum().item()
                if errs is not None:
                    err_sum += errs.double().sum().item()
        finally:
            model.train(was_training)
        out = {"loss": loss_sum / total}
        if self.has_error:
            out["err"] = err_sum / total
        return out

    # ----- optimisation -----
    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        params = list(model.parameters())
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        raise ValueError(f"unknown optimizer {c.optimizer!r} (adamw or sgd)")

    def lr_at(self, step: int) -> float:
        """The learning rate for the update taking the model from `step` to `step + 1`."""
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return c.lr
        if c.schedule == "cosine":
            span = max(1, c.steps - c.warmup_steps)
            progress = min(1.0, (step - c.warmup_steps) / span)
            return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        raise ValueError(f"unknown schedule {c.schedule!r} (constant or cosine)")


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)
