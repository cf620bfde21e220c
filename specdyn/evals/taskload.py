"""Which task evaluates a checkpoint, and how its weights get into the task's model.

A task comes from `--task NAME` (built-in; `hf-causal-lm`/`hf-masked-lm` build any Hugging Face language model from
the checkpoint's config.json and evaluate it on `--data FILE`), `--task path/to/file.py:object` or `--task package.module:object`
(a user's own model and data, see specdyn.tasks.base.Task), or, when the series was written by `specdyn train`,
from the checkpoint's metadata ("task" + "config"). Before any work, the model's state dict is matched against
the checkpoint's tensors by name and shape, so a wrong task fails in one line naming the first mismatch.
"""

from __future__ import annotations

import importlib
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.io import CheckpointReader


def _as_task(obj, spec: str):
    """A Task instance from an object named by the user: an instance, or a class/factory called with no args."""
    from specdyn.tasks.base import Task

    if isinstance(obj, (type, types.FunctionType)):
        obj = obj()
    if not isinstance(obj, Task):
        raise SpecdynError(
            f"--task {spec}: {type(obj).__name__} is not a task; it needs name, build_model(), batches(split) "
            "and evaluate(model, split) (see specdyn.tasks.base.Task and examples/user_task.py)"
        )
    return obj


def load_module_task(spec: str):
    """`package.module:object`, imported with the normal import system."""
    module_name, _, attr = spec.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecdynError(
            f"--task {spec}: cannot import {module_name!r} ({e}); check the name and that it is installed"
        ) from None
    if not hasattr(module, attr):
        raise SpecdynError(f"--task {spec}: module {module_name!r} defines no {attr!r}")
    return _as_task(getattr(module, attr), spec)


def load_file_task(spec: str):
    """`path/to/file.py:object`: runs the user's file (which is what naming it asks for)."""
    from specdyn.tasks import load_user_task

    path_str, _, attr = spec.rpartition(":")
    path = Path(path_str)
    if not path.is_file():
        raise SpecdynError(f"--task {spec}: {path} does not exist; give path/to/file.py:object")
    try:
        return load_user_task(spec)
    except TypeError as e:
        if "is not a task" in str(e):
            raise SpecdynError(f"--task {spec}: {e}") from None
        raise SpecdynError(f"--task {spec}: {path} failed to load: TypeError: {e}") from None
    except AttributeError as e:
        raise SpecdynError(f"--task {spec}: {e}") from None
    except SpecdynError:
        raise
    except Exception as e:  # the user's file raised while loading: report it in one line
        raise SpecdynError(f"--task {spec}: {path} failed to load: {type(e).__name__}: {e}") from None


def is_user_spec(spec: str) -> bool:
    return ":" in spec


def trained_task(path: Path) -> tuple[str | None, dict | None]:
    """The (task name, config) `specdyn train` recorded for a checkpoint, in any of its --format layouts
    (or its run.json); (None, None) for checkpoints from elsewhere."""
    from specdyn.errors import SpecdynError as _Err
    from specdyn.train import read_task

    try:
        _, task, config = read_task(path)
    except _Err:  # e.g. a pickle that needs --trust-pickle: then the task must be named
        return None, None
    return (task if isinstance(task, str) else None), (config if isinstance(config, Mapping) else None)


def resolve_task(spec: str | None, where: Path, overrides: Mapping | None = None, data: str | None = None):
    """The task for checkpoint `where` and a JSON description of it (stored with results, so reruns can be checked).

    spec None: the task `specdyn train` recorded for the checkpoint, with its exact config. A built-in name: that
    task, with the checkpoint's config when it records the same task (else the defaults), then `overrides`.
    A user task (`file.py:object`, `module:object`) is loaded as is. `data` (--data FILE) is the data of the
    hf-* tasks, which build the model from `where`'s config.json.
    """
    if data is not None:
        overrides = {**(overrides or {}), "data": str(data)}
    from specdyn.tasks import TASKS, make_config, task_from_config
    from specdyn.tasks.hf_lm import HF_TASKS, make_hf_task

    if spec in HF_TASKS:  # built from the checkpoint's own config.json, evaluated on --data
        task, config = make_hf_task(spec, where, dict(overrides or {}))
        return task, {"spec": spec, "name": spec, "config": config}
    if overrides and "data" in overrides:
        raise SpecdynError(
            f"--data is the data of the {', '.join(HF_TASKS)} tasks; pass one with --task", code=EXIT_USAGE
        )
    meta_task, meta_config = (None, None) if spec is not None and is_user_spec(spec) else trained_task(where)
    if spec is None:
        if meta_task is None:
            raise SpecdynError(
                f"{where}: the checkpoint names no task (it was not written by `specdyn train`); pass --task NAME "
                "(built-in), --task path/to/file.py:object or --task package.module:object"
            )
        if meta_task not in TASKS:
            raise SpecdynError(f"{where}: metadata names task {meta_task!r}, which is not built in; pass --task")
        spec = meta_task
    if is_user_spec(spec):
        if overrides:
            raise SpecdynError(
                f"--config applies to built-in tasks only; {spec} is a user task (set its options in its file)"
            )
        path_str = spec.rpartition(":")[0]
        task = load_file_task(spec) if path_str.endswith(".py") or "/" in path_str else load_module_task(spec)
        return task, {"spec": spec, "name": str(getattr(task, "name", "")), "config": None}
    if spec not in TASKS:
        raise SpecdynError(
            f"--task {spec!r}: no such built-in task ({', '.join([*TASKS, *HF_TASKS])}); a user task is path/to/file.py:object "
            "or package.module:object"
        )
    base = meta_config if meta_task == spec else None
    try:
        config = make_config(spec, overrides or {}, base=base or {})
    except ValueError as e:
        raise SpecdynError(f"{where}: {e}") from None
    from specdyn.tasks.base import config_dict

    task = task_from_config(spec, config_dict(config))
    return task, {"spec": spec, "name": spec, "config": json.loads(json.dumps(config_dict(config)))}


# ------------------------------------------------------------------------------------------ weights


@dataclass(frozen=True)
class StateMap:
    """Model state-dict key -> checkpoint tensor name (they differ by a wrapper prefix such as `model.`)."""

    names: dict[str, str]
    prefix: str = ""


def _shapes(reader: CheckpointReader) -> dict[str, tuple[int, ...]]:
    return {n: tuple(reader.shape(n)) for n in reader.names()}


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def match_state(model: torch.nn.Module, ckpt_shapes: Mapping[str, tuple], where: Path) -> StateMap:
    """Match the model's state dict to a checkpoint's tensors by name and shape, or raise naming the first mismatch.

    The checkpoint's names may carry one wrapper prefix (a LightningModule's `model.`, `net.`); tensors outside
    that prefix are other modules and ignored. Inside it, a missing or extra tensor or a shape mismatch fails.
    """
    from specdyn.tasks.hf_keys import hf_state_map, is_hf_model

    if is_hf_model(model):  # tied heads, renamed heads, base-model prefixes: transformers' own key handling
        return StateMap(hf_state_map(model, ckpt_shapes, where))
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not model_shapes:
        raise SpecdynError(f"{where}: the task's model has no parameters")
    first = next(iter(model_shapes))
    prefixes = [""] + sorted({n[: -len(first)] for n in ckpt_shapes if n.endswith("." + first)}, key=len)
    best = None
    for prefix in prefixes:
        inside = {n[len(prefix) :]: s for n, s in ckpt_shapes.items() if n.startswith(prefix)}
        problem = _first_mismatch(model_shapes, inside, prefix)
        if problem is None:
            return StateMap({k: prefix + k for k in model_shapes}, prefix)
        best = best or problem
    raise SpecdynError(f"{where}: the task's model does not match the checkpoint: {best}; check --task")


def _first_mismatch(model_shapes: Mapping, ckpt_shapes: Mapping, prefix: str) -> str | None:
    for name, shape in model_shapes.items():
        if name not in ckpt_shapes:
            return f"the model has {name!r} ({_fmt(shape)}) but the checkpoint has no {prefix + name!r}"
        if tuple(ckpt_shapes[name]) != shape:
            return f"{name!r} is {_fmt(shape)} in the model but {_fmt(ckpt_shapes[name])} in the checkpoint"
    extra = [n for n in ckpt_shapes if n not in model_shapes]
    if extra:
        return f"the checkpoint has {prefix + extra[0]!r} ({_fmt(ckpt_shapes[extra[0]])}), which the model lacks"
    return None


def check_same_architecture(shapes_a: Mapping, shapes_b: Mapping, a: Path, b: Path) -> None:
    """Two checkpoints of one architecture: the same tensor names with the same shapes."""
    for name, shape in shapes_a.items():
        if name not in shapes_b:
            raise SpecdynError(f"{b} and {a} are different architectures: {b} has no tensor {name!r}")
        if tuple(shapes_b[name]) != tuple(shape):
            raise SpecdynError(
                f"{b} and {a} are different architectures: {name!r} is {_fmt(shapes_b[name])} vs {_fmt(shape)}"
            )
    extra = [n for n in shapes_b if n not in shapes_a]
    if extra:
        raise SpecdynError(f"{b} and {a} are different architectures: {a} has no tensor {extra[0]!r}")


def read_state(reader: CheckpointReader, state_map: StateMap, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the model's keys, in the model's dtypes (bf16 checkpoints upcast)."""
    target = model.state_dict()
    return {k: reader.tensor(c).to(target[k].dtype) for k, c in state_map.names.items()}


@torch.no_grad()
def load_state_(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a state (model keys -> tensors) into the model's own tensors, in place: one model instance serves
    every checkpoint and variant."""
    live = model.state_dict()
    for k, v in state.items():
        live[k].copy_(v)


def matrix_params(model: torch.nn.Module) -> list[str]:
    """docs/method.md 0: parameters with ndim >= 2 in registration order; the last is the final layer."""
    from specdyn.branching import matrix_names

    return matrix_names(model)


@dataclass
class Endpoint:
    """A checkpoint ready for evaluation: its path, metadata, tensor shapes and the open reader."""

    path: Path
    reader: CheckpointReader
    metadata: dict
    shapes: dict

    @classmethod
    def open(cls, path, trust_pickle: bool = False) -> Endpoint:
        from specdyn.io import open_checkpoint

        reader = CheckpointReader(open_checkpoint(path), trust_pickle=trust_pickle)  # errors are SpecdynErrors
        return cls(Path(path), reader, reader.metadata(), _shapes(reader))
