"""The task registry: built-in tasks by name, and user tasks from `path/file.py:object`.

`TASKS` maps each built-in name to its class, importing the module (and torch) only when a task is looked
up, so listing names stays cheap. A checkpoint's metadata (task name + config JSON) rebuilds its exact task,
data split included, through `task_from_config`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_BUILTIN = {
    "modadd": ("specdyn.tasks.modadd", "ModAdd"),
    "mlp": ("specdyn.tasks.mlp", "MLPTask"),
    "cnn": ("specdyn.tasks.cnn", "CNNTask"),
    "lstm": ("specdyn.tasks.lstm", "LSTMTask"),
    "lm": ("specdyn.tasks.lm", "LMTask"),
    "unet": ("specdyn.tasks.unet", "UNetTask"),
}


class _LazyRegistry(Mapping):
    """name -> task class; a module is imported on first lookup."""

    def __getitem__(self, name: str):
        module, cls = _BUILTIN[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_BUILTIN)

    def __len__(self) -> int:
        return len(_BUILTIN)


TASKS: Mapping[str, type] = _LazyRegistry()


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)} (or a user task path/file.py:object)")


def _coerce(field: dataclasses.Field, hint: Any, value: Any) -> Any:
    """A JSON or command-line value converted to a config field's type (lists to tuples, "true" to True)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = json.loads(value if value.startswith("[") else f"[{value}]")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str):
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{field.name} must be true or false, got {value!r}")
            return low in ("true", "1", "yes")
        return bool(value)
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{field.name} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    return value


def make_config(name: str, overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None):
    """The Config of built-in task `name`: defaults, then `base` (e.g. a checkpoint's config), then `overrides`.

    Unknown keys and values of the wrong type raise ValueError naming the key and the valid keys.
    """
    if name not in _BUILTIN:
        raise _unknown(name)
    config_cls = TASKS[name].Config
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for source in (base or {}), (overrides or {}):
        for key, value in source.items():
            if key not in fields:
                raise ValueError(f"task {name} has no config key {key!r}; keys: {', '.join(fields)}")
            try:
                values[key] = _coerce(fields[key], hints[key], value)
            except (TypeError, ValueError, json.JSONDecodeError) as e:
                raise ValueError(f"bad value for {name} config key {key!r}: {e}") from None
    return config_cls(**values)


def make_task(name: str, **config_overrides):
    """A built-in task with its default config, overridden by keyword arguments."""
    config = make_config(name, config_overrides)
    return TASKS[name](config)


def task_from_config(name: str, config: Mapping[str, Any] | str):
    """Rebuild the exact task a checkpoint was trained on from its metadata (config as a dict or JSON)."""
    if isinstance(config, str):
        config = json.loads(config)
    built = make_config(name, base=config)
    return TASKS[name](built)


def load_user_task(spec: str):
    """Load `path/file.py:object` (a Task instance, or a class or factory called with no arguments).

    This executes the user's file, which is what they ask for by naming it.
    """
    from specdyn.tasks.base import Task

    path_str, sep, attr = spec.rpartition(":")
    if not sep or not path_str.endswith(".py"):
        raise ValueError(f"task {spec!r} is neither a built-in name ({', '.join(TASKS)}) nor path/file.py:object")
    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such task file")
    module_name = f"specdyn_user_task_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    if not hasattr(module, attr):
        raise AttributeError(f"{path} defines no {attr!r}")
    obj = getattr(module, attr)
    if isinstance(obj, (type, types.FunctionType)):
        obj = obj()
    if not isinstance(obj, Task):
        raise TypeError(
            f"{spec} is not a task: it needs name, build_model(), batches(split) and evaluate(model, split)"
        )
    return obj


def load_task(spec: str, config: Mapping[str, Any] | None = None):
    """A task from a built-in name (with an optional config) or from `path/file.py:object`."""
    if spec in _BUILTIN:
        return task_from_config(spec, config or {})
    return load_user_task(spec)


__all__ = ["TASKS", "make_config", "make_task", "task_from_config", "load_task", "load_user_task"]
