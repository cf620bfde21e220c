"""Plain `torch.save` files (`*.pt`, `*.pth`, `*.bin`): a state dict, or one nested under a usual key.

Loaded with the safe loader (`specdyn.io.safeload`) and memory-mapped, so tensors page in on use; the dict keeps
registration order. Also the reader of Lightning `.ckpt` files and HF `pytorch_model.bin` shards.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from specdyn.errors import CheckpointError
from specdyn.io.base import STATE_DICT_KEYS, CheckpointFormat, Saved, best_effort, step_in
from specdyn.io.safeload import peek_pickle, safe_torch_load

if TYPE_CHECKING:
    import torch

SUFFIXES = (".pt", ".pth", ".bin")
NOT_MODEL_ENTRY = re.compile(r"optim|sched|scaler|rng|loops|callbacks", re.I)


class TorchSource:
    """State dict(s) from torch.save files, loaded with the safe loader and memory-mapped."""

    ordered = True

    def __init__(self, files: list[Path], trust_pickle: bool):
        self.tensors: dict[str, torch.Tensor] = {}
        self.top = None
        for f in files:
            obj = safe_torch_load(f, trust_pickle)
            if self.top is None:
                self.top = obj
            for key, value in _flatten(pick_state_dict(obj, f)):
                self.tensors[key] = value

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key].detach()

    def metadata(self, keys: Sequence[str] | None = None) -> dict:
        """The file's plain top-level entries (nanoGPT's "model_args", "iter_num", ...), or only `keys`."""
        if not isinstance(self.top, Mapping):
            return {}
        if keys is None:
            keys = [
                k for k in self.top if isinstance(k, str) and k not in STATE_DICT_KEYS and not NOT_MODEL_ENTRY.search(k)
            ]
        out = {k: plain(self.top[k]) for k in keys if k in self.top}
        return {k: v for k, v in out.items() if v is not NOT_PLAIN}

    def param_order(self) -> list[str]:
        return []

    def aliases(self) -> dict[str, str]:
        """Tensors that are views of the same storage, offset, shape and strides as an earlier one (a tied
        weight saved twice: torch.save keeps the sharing) -> that earlier tensor's key."""
        first: dict[tuple, str] = {}
        out = {}
        for key, t in self.tensors.items():
            if t.numel() == 0:
                continue
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if ident in first:
                out[key] = first[ident]
            else:
                first[ident] = key
        return out

    def close(self) -> None:
        self.tensors.clear()
        self.top = None


class TorchFormat(CheckpointFormat):
    name = "torch"
    describe = "torch.save *.pt/*.pth/*.bin"
    writable = True

    def claim_file(self, path: Path) -> Path | None:
        return path if path.suffix in SUFFIXES else None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        with best_effort():
            return step_in(peek_pickle(path)[0])
        return None

    def open(self, path: Path, trust_pickle: bool) -> TorchSource:
        return TorchSource([path], trust_pickle)

    def checkpoint_name(self, step: int, epoch: int = 0) -> str:
        return f"step_{step:06d}.pt"

    def write(self, path: Path, ckpt: Saved) -> None:
        import torch

        torch.save({"state_dict": ckpt.state_dict, "step": ckpt.step}, path)


def _holds_tensors(mapping: Mapping, deep: bool = True) -> bool:
    import torch

    return any(
        isinstance(v, torch.Tensor) or (deep and isinstance(v, Mapping) and _holds_tensors(v)) for v in mapping.values()
    )


def pick_state_dict(obj, path: Path) -> Mapping:
    """The model's state dict inside a loaded file: the file itself, or nested under a usual key."""
    import torch

    if isinstance(obj, torch.nn.Module):  # torch.save(model), only loadable with --trust-pickle
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            value = obj.get(key)
            if isinstance(value, torch.nn.Module):
                value = value.state_dict()
            if isinstance(value, Mapping) and _holds_tensors(value):
                return value
        if _holds_tensors(obj, deep=False):
            return obj
        model_like = {k: v for k, v in obj.items() if not (isinstance(k, str) and NOT_MODEL_ENTRY.search(k))}
        if _holds_tensors(model_like):
            return model_like
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(
            f"{path}: no model state dict in this file (top-level keys: {keys}); expected a dict "
            f"of tensors or one under {', '.join(STATE_DICT_KEYS)}"
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def _flatten(mapping: Mapping, prefix: str = ""):
    """(dotted name, tensor) for every tensor in a possibly nested state dict; non-tensor entries are dropped."""
    import torch

    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, Mapping):
            yield from _flatten(value, name + ".")


NOT_PLAIN = object()


def plain(value, depth: int = 0):
    """`value` as JSON-like data (Namespace -> dict, Path -> str, numpy scalars -> numbers), or NOT_PLAIN."""
    import numpy as np

    if depth > 20:
        return NOT_PLAIN
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= 10_000 and value.dtype != object:
        return value.tolist()
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    try:
        if isinstance(value, Mapping):
            items = {str(k): plain(v, depth + 1) for k, v in value.items()}
            return NOT_PLAIN if any(v is NOT_PLAIN for v in items.values()) else items
        if isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, (bytes, bytearray)):
            items = [plain(v, depth + 1) for v in value]
            return NOT_PLAIN if any(v is NOT_PLAIN for v in items) else items
    except Exception:  # e.g. an omegaconf interpolation that cannot resolve
        return NOT_PLAIN
    return NOT_PLAIN
