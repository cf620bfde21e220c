"""Find the checkpoints of a training run, order them by step, and read them one tensor at a time.

Formats: safetensors files, Hugging Face Trainer `checkpoint-<step>/` folders, Lightning `.ckpt`, plain
`torch.save` files and torch.distributed.checkpoint (DCP) folders. Pickled formats go through `specdyn.safeload`,
so reading a checkpoint never runs code from it unless the user passes --trust-pickle.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from specdyn.errors import EXIT_NO_CHECKPOINTS, EXIT_NOT_FOUND, SpecdynError
from specdyn.safeload import (
    CheckpointError,
    UnsafePickleError,
    dcp_load,
    peek_pickle,
    read_dcp_metadata,
    safe_torch_load,
    unreadable,
)

if TYPE_CHECKING:  # annotations only: torch is imported where tensors are read
    import torch

__all__ = ["Checkpoint", "CheckpointError", "CheckpointReader", "UnsafePickleError", "discover", "natural_key",
           "open_checkpoint", "step_from_name", "strip_prefixes"]

SUPPORTED_LAYOUTS = (
    "*.safetensors files; Hugging Face checkpoint-<step>/ folders (model.safetensors, sharded "
    "model-*-of-*.safetensors + index, pytorch_model.bin); Lightning *.ckpt; torch.save *.pt/*.pth/*.bin; "
    "torch.distributed.checkpoint folders (.metadata + *.distcp)"
)
STEP_KEYS = ("global_step", "step", "iter_num", "iteration")  # where training scripts store the step
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module")  # where they nest the weights
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")

# Files next to checkpoints that are not model weights (HF Trainer, accelerate, DeepSpeed, open_lth).
_NOT_WEIGHTS = re.compile(r"(optimizer|scheduler|lr_scheduler|scaler|rng_state|random_states|training_args|mask)"
                          r"(_\d+)?|.*optim_states")
_NOT_MODEL_ENTRY = re.compile(r"optim|sched|scaler|rng|loops|callbacks", re.I)
_SHARD = re.compile(r".+-\d+-of-\d+\.(safetensors|bin)")
_LIGHTNING_VERSIONED = re.compile(r"(.+)-v\d+")
_IN_PROGRESS = (".tmp", ".part", ".partial", ".incomplete", ".lock")  # writers' staging names
_LIGHTNING_META = ("hyper_parameters", "datamodule_hyper_parameters", "hparams_name", "epoch", "global_step",
                   "pytorch-lightning_version")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series: where it is, which run it belongs to, its training step and format."""

    path: Path  # the checkpoint file or folder, absolute
    run_dir: Path  # the run directory it belongs to, absolute
    step: int | None  # None only under order="name" (or from open_checkpoint) when no step is found
    format: str  # "safetensors" | "hf" | "lightning" | "torch" | "dcp"

    @property
    def relpath(self) -> str:
        return self.path.relative_to(self.run_dir).as_posix()


# --- names and steps ---------------------------------------------------------------------------------------

def natural_key(name: str) -> tuple:
    """Sort key treating digit runs as numbers: "layers.2" < "layers.10"."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def strip_prefixes(name: str) -> str:
    """Drop the wrappers DDP (`module.`) and torch.compile (`_orig_mod.`) add to parameter names.

    `_orig_mod.` is also removed inside a name (a compiled submodule of a LightningModule); `module.` only in front,
    since inside a name it can be a real attribute.
    """
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    while "._orig_mod." in name:
        name = name.replace("._orig_mod.", ".")
    return name


def step_from_name(name: str, explicit_only: bool = False) -> int | None:
    """The step a file or folder name states: `step_100`, `step=100`, `global_step100`, `iter_5`, else (unless
    `explicit_only`) the last integer in the stem (`checkpoint-500`, `ckpt_2000.pt`)."""
    stem = name
    for suffix in (".safetensors", ".ckpt", *TORCH_SUFFIXES):
        stem = stem.removesuffix(suffix)
    found = re.findall(r"(?:step|iter|iteration)[_=-]?(\d+)", stem, re.I)
    if found:
        return int(found[-1])
    if explicit_only:
        return None
    numbers = re.findall(r"\d+", stem)
    return int(numbers[-1]) if numbers else None


def _as_step(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _step_in(obj) -> int | None:
    if isinstance(obj, Mapping):
        for key in STEP_KEYS:
            step = _as_step(obj.get(key))
            if step is not None:
                return step
    return None


# --- discovery ---------------------------------------------------------------------------------------------

def discover(run_dir, order: str = "step") -> list[Checkpoint]:
    """All checkpoints of the series in `run_dir`, ordered by training step (order="name": natural sort of
    relative paths, steps filled where known, no step required and equal steps allowed).

    Looks at the files directly in `run_dir` and at checkpoint-*/DCP folders directly inside it; reads only
    headers and pickles' plain values to find steps, never tensor data. Ignored: `*.zarr` stores, optimizer/
    scheduler/rng/scaler files, `training_args.bin`, Lightning's `last.ckpt` and `-vN` duplicates, PEFT
    `adapter_model.*` (adapters are not the model's weights), a final `model.safetensors` saved next to HF
    checkpoint folders, and files or folders still being written (`*.tmp`, `*.partial`, ...). A `run_dir` that
    is itself one HF or DCP checkpoint folder yields that one checkpoint.
    """
    if order not in ("step", "name"):
        raise ValueError(f"order must be 'step' or 'name', not {order!r}")
    root = Path(run_dir).expanduser().resolve()
    if not root.exists():
        raise SpecdynError(f"{root}: no such directory", code=EXIT_NOT_FOUND)
    if not root.is_dir():
        raise SpecdynError(f"{root} is a file; pass the directory that holds the checkpoint series")
    itself = _classify_dir(root)
    if itself and itself[0] == "hf" and any(root.glob("checkpoint-*/")):
        itself = None  # an HF output_dir: its top-level model is the final save, the series is in checkpoint-*
    if itself:
        fmt, target = itself
        found, skipped = [(target, fmt)], []
        root = root.parent
    else:
        found, skipped = _scan(root)
    if not found:
        note = f" (skipped: {'; '.join(skipped)})" if skipped else ""
        raise SpecdynError(f"no checkpoints found in {root}{note}; supported layouts: {SUPPORTED_LAYOUTS}",
                           code=EXIT_NO_CHECKPOINTS)
    formats = Counter(fmt for _, fmt in found)
    if len(formats) > 1:
        listing = ", ".join(f"{n} {fmt} (e.g. {next(p.name for p, f in found if f == fmt)})"
                            for fmt, n in formats.most_common())
        raise SpecdynError(f"{root} mixes checkpoint formats: {listing}; pass a directory that holds one series")
    checkpoints = [Checkpoint(path, root, _find_step(path, fmt, root), fmt) for path, fmt in found]
    return _ordered(checkpoints, order)


def open_checkpoint(path) -> Checkpoint:
    """A single checkpoint given by its own path (a file, or an HF/DCP folder); its run_dir is its parent.

    The step is filled where the file or name states it, else None.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise SpecdynError(f"{p}: no such file or directory", code=EXIT_NOT_FOUND)
    kind = _classify_dir(p) if p.is_dir() else _classify_file(p)
    if kind is None:
        raise SpecdynError(f"{p} is not a checkpoint specdyn can read; supported layouts: {SUPPORTED_LAYOUTS}")
    fmt, target = kind
    return Checkpoint(target, p.parent, _find_step(target, fmt, p.parent), fmt)


def _classify_file(p: Path) -> tuple[str, Path] | None:
    if p.suffix == ".safetensors":
        return "safetensors", p
    if p.suffix == ".ckpt":
        return "lightning", p
    if p.suffix in TORCH_SUFFIXES:
        return "torch", p
    return None


def _hf_weights(folder: Path) -> Path | None:
    return next((folder / n for n in HF_WEIGHTS if (folder / n).is_file()), None)


def _classify_dir(d: Path) -> tuple[str, Path] | None:
    """("dcp", d) for a DCP folder, ("hf", d) for an HF model folder, ("dcp", sub) for an HF folder whose weights
    are an FSDP sharded state dict (`pytorch_model_fsdp_0/`), else None."""
    if (d / ".metadata").is_file():
        return "dcp", d
    weights = _hf_weights(d)
    if weights and (weights.name.endswith(".index.json") or (d / "config.json").is_file()
                    or (d / "trainer_state.json").is_file() or d.name.startswith("checkpoint-")):
        return "hf", d
    fsdp = sorted(s for s in d.glob("pytorch_model_fsdp_*") if (s / ".metadata").is_file())
    if fsdp and ((d / "trainer_state.json").is_file() or d.name.startswith("checkpoint-")):
        return "dcp", fsdp[0]
    return None


def _scan(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    entries = sorted(root.iterdir())
    has_hf_folders = any(e.is_dir() and e.name.startswith("checkpoint-") for e in entries)
    found, skipped = [], []
    for p in entries:
        name = p.name
        if name.startswith(".") or name.endswith((".zarr", *_IN_PROGRESS)):
            continue
        if p.is_dir():
            kind = _classify_dir(p) if (name.startswith("checkpoint-") or (p / ".metadata").is_file()) else None
            if kind:
                found.append((kind[1], kind[0]))
            elif name.startswith("checkpoint-"):
                adapter = any(p.glob("adapter_model.*"))
                skipped.append(f"{name}/ has no model weights" + (" (PEFT adapters are not read)" if adapter else ""))
            continue
        kind = _classify_file(p)
        if kind is None:
            continue
        stem = p.name.rsplit(".", 1)[0]
        if _SHARD.fullmatch(name) or stem.startswith("adapter_model") or _NOT_WEIGHTS.fullmatch(stem):
            continue
        if has_hf_folders and name in ("model.safetensors", "pytorch_model.bin"):
            continue  # the final model HF Trainer.save_model writes next to the checkpoint folders
        if kind[0] == "lightning":
            versioned = _LIGHTNING_VERSIONED.fullmatch(stem)
            if stem == "last" or (versioned and (versioned[1] == "last" or (root / f"{versioned[1]}.ckpt").exists())):
                skipped.append(f"{name} (Lightning's copy of another checkpoint)")
                continue
        found.append((p, kind[0]))
    return found, skipped


def _ordered(checkpoints: list[Checkpoint], order: str) -> list[Checkpoint]:
    if order == "name":
        return sorted(checkpoints, key=lambda c: natural_key(c.relpath))
    for c in checkpoints:
        if c.step is None:
            raise SpecdynError(f"{c.path}: no training step found in the file or its name; rename it "
                               "(e.g. step_100.safetensors) or pass --order name to order by name")
    checkpoints = sorted(checkpoints, key=lambda c: (c.step, natural_key(c.relpath)))
    for a, b in zip(checkpoints, checkpoints[1:], strict=False):
        if a.step == b.step:
            raise SpecdynError(f"{a.path} and {b.path} both hold step {a.step}; remove one, pass a narrower "
                               "directory, or pass --order name")
    return checkpoints


def _find_step(path: Path, fmt: str, run_dir: Path) -> int | None:
    """The step stored in the checkpoint (cheaply: headers, trainer_state.json, a pickle's plain values), else the
    one its name states. An unreadable file falls back to its name: reading it later reports the damage."""
    if fmt == "hf" or (fmt == "dcp" and path.parent != run_dir and path.parent.name.startswith("checkpoint-")):
        folder = path if fmt == "hf" else path.parent
        step = _as_step(_read_json(folder / "trainer_state.json").get("global_step"))
        return step if step is not None else step_from_name(folder.name)
    step = None
    with contextlib.suppress(Exception):
        if fmt == "safetensors":
            step = _as_step(_safetensors_header(path).get("__metadata__", {}).get("step"))
        elif fmt == "dcp":
            step = _step_in(_Dcp(path, trust_pickle=False).plain_items(STEP_KEYS))
        else:
            step = _step_in(peek_pickle(path)[0])
    if step is not None:
        return step
    # Lightning names carry epochs and metrics (best-epoch=14-val_loss=0.33): only an explicit step= counts.
    return step_from_name(path.name, explicit_only=fmt == "lightning")


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, read without touching tensor data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"implausible safetensors header length {length}")
        return json.loads(f.read(length))


# --- reading -----------------------------------------------------------------------------------------------

class CheckpointReader:
    """Reads one checkpoint tensor by tensor (safetensors safe_open, torch.load mmap=True, DCP per-item loads), so
    memory stays near one tensor plus whatever the caller keeps. Use as a context manager."""

    def __init__(self, ckpt: Checkpoint, trust_pickle: bool = False):
        self.checkpoint = ckpt
        self.trust_pickle = trust_pickle
        self._backend = _open_backend(ckpt, trust_pickle)
        self._raw = self._index()  # stripped name -> the backend's key, in depth order

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        """Every tensor's name, prefixes stripped, in registration order where the format keeps it (torch and
        Lightning state dicts, DCP, safetensors with specdyn's `param_order` metadata), else natural order.

        Lightning names keep the LightningModule's attribute prefix (`model.`, `net.`): it is part of the module
        path, and a module may hold several submodules (a model and an EMA copy) that only it tells apart.
        """
        return list(self._raw)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._backend.shape(self._key(name))

    def dtype(self, name: str) -> torch.dtype:
        return self._backend.dtype(self._key(name))

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor on CPU in its stored dtype (bf16 stays bf16; the caller upcasts)."""
        return self._backend.tensor(self._key(name))

    def metadata(self) -> dict:
        """Plain-data metadata: specdyn safetensors {"step", "task", "config", "param_order", ...} (JSON parsed);
        HF {"config", "trainer_state"}; Lightning {"hyper_parameters", "epoch", "global_step", ...}; torch files
        their plain top-level entries (nanoGPT's "model_args", "iter_num", ...); DCP its top-level plain items."""
        fmt, path = self.checkpoint.format, self.checkpoint.path
        if fmt == "hf" or (fmt == "dcp" and path.parent.name.startswith("checkpoint-")):
            folder = path if fmt == "hf" else path.parent
            return {key: data for key, name in (("config", "config.json"), ("trainer_state", "trainer_state.json"))
                    if (data := _read_json(folder / name))}
        return self._backend.metadata(lightning=fmt == "lightning")

    def close(self) -> None:
        self._backend.close()

    def _key(self, name: str) -> str:
        try:
            return self._raw[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a tensor of {self.checkpoint.path}") from None

    def _index(self) -> dict[str, str]:
        raw: dict[str, str] = {}
        for key in self._backend.keys():
            name = strip_prefixes(key)
            if name in raw:
                raise CheckpointError(f"{self.checkpoint.path}: tensors {raw[name]!r} and {key!r} are both "
                                      f"{name!r} once the module./_orig_mod. prefixes are stripped")
            raw[name] = key
        if self._backend.ordered:
            return raw
        listed = self._backend.param_order()
        rank = {n: i for i, n in enumerate(listed)} if listed else {}
        rank.update({strip_prefixes(n): i for n, i in list(rank.items())})
        order = sorted(raw, key=lambda n: (rank.get(n, len(rank)), natural_key(n)))
        return {n: raw[n] for n in order}


def _open_backend(ckpt: Checkpoint, trust_pickle: bool):
    path, fmt = ckpt.path, ckpt.format
    if fmt == "safetensors":
        return _Safetensors.file(path)
    if fmt in ("torch", "lightning"):
        return _Torch([path], trust_pickle)
    if fmt == "dcp":
        return _Dcp(path, trust_pickle)
    if fmt == "hf":
        weights = _hf_weights(path)
        if weights is None:
            raise CheckpointError(f"{path}: no model weights ({' or '.join(HF_WEIGHTS)}) in this folder")
        if weights.name.endswith(".index.json"):
            with _reading(weights, "shard index"):
                weight_map = json.loads(weights.read_text())["weight_map"]
            shards = {k: path / f for k, f in weight_map.items()}
            if weights.name.startswith("model.safetensors"):
                return _Safetensors(shards)
            return _Torch(sorted(set(shards.values())), trust_pickle)  # HF shards in state-dict order
        return _Safetensors.file(weights) if weights.suffix == ".safetensors" else _Torch([weights], trust_pickle)
    raise ValueError(f"unknown checkpoint format {fmt!r}")


@contextlib.contextmanager
def _reading(path, what: str = "checkpoint"):
    """Turn any failure while reading `path` into a CheckpointError naming it."""
    try:
        yield
    except SpecdynError:
        raise
    except Exception as e:
        raise unreadable(path, e, what) from e


def _safetensors_dtype(code: str):
    """torch dtype of a safetensors header dtype code."""
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    }[code]


class _Safetensors:
    """One safetensors file, or a sharded set (name -> shard file); each file opened lazily with safe_open."""

    ordered = False  # safetensors sorts its entries; registration order only via param_order metadata

    def __init__(self, weight_map: dict[str, Path]):
        self.weight_map = weight_map
        self._handles: dict[Path, object] = {}
        self._single: Path | None = None

    @classmethod
    def file(cls, path: Path) -> _Safetensors:
        backend = cls({})
        backend._single = path
        backend.weight_map = {k: path for k in backend._open(path).keys()}
        return backend

    def _open(self, path: Path):
        if path not in self._handles:
            from safetensors import safe_open

            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in the index is missing")
            with _reading(path):
                self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
        return self._handles[path]

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, key: str) -> tuple[int, ...]:
        path = self.weight_map[key]
        with _reading(path):
            return tuple(self._open(path).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        path = self.weight_map[key]
        with _reading(path):
            code = self._open(path).get_slice(key).get_dtype()
        try:
            return _safetensors_dtype(code)
        except KeyError:  # a dtype code newer than this table: ask torch
            return self.tensor(key).dtype

    def tensor(self, key: str) -> torch.Tensor:
        path = self.weight_map[key]
        with _reading(path):
            return self._open(path).get_tensor(key)

    def metadata(self, lightning: bool = False) -> dict:
        if self._single is None:
            return {}
        with _reading(self._single):
            raw = self._open(self._single).metadata() or {}
        return {k: _parse_json(v) for k, v in raw.items()}

    def param_order(self) -> list[str]:
        order = self.metadata().get("param_order")
        return [n for n in order if isinstance(n, str)] if isinstance(order, list) else []

    def close(self) -> None:
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                handle.__exit__(None, None, None)
        self._handles.clear()


def _parse_json(value: str):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


class _Torch:
    """State dict(s) from torch.save files, loaded with the safe loader and memory-mapped (tensors page in on use)."""

    ordered = True

    def __init__(self, files: list[Path], trust_pickle: bool):
        self.tensors: dict[str, torch.Tensor] = {}
        self.top = None
        for f in files:
            obj = safe_torch_load(f, trust_pickle)
            if self.top is None:
                self.top = obj
            for key, value in _flatten(_pick_state_dict(obj, f)):
                self.tensors[key] = value

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key].detach()

    def metadata(self, lightning: bool = False) -> dict:
        if not isinstance(self.top, Mapping):
            return {}
        keys = [k for k in _LIGHTNING_META if k in self.top] if lightning else [
            k for k in self.top if isinstance(k, str) and k not in STATE_DICT_KEYS and not _NOT_MODEL_ENTRY.search(k)]
        out = {k: _plain(self.top[k]) for k in keys}
        return {k: v for k, v in out.items() if v is not _NOT_PLAIN}

    def param_order(self) -> list[str]:
        return []

    def close(self) -> None:
        self.tensors.clear()
        self.top = None


def _holds_tensors(mapping: Mapping, deep: bool = True) -> bool:
    import torch

    return any(isinstance(v, torch.Tensor) or (deep and isinstance(v, Mapping) and _holds_tensors(v))
               for v in mapping.values())


def _pick_state_dict(obj, path: Path) -> Mapping:
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
        model_like = {k: v for k, v in obj.items() if not (isinstance(k, str) and _NOT_MODEL_ENTRY.search(k))}
        if _holds_tensors(model_like):
            return model_like
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: no model state dict in this file (top-level keys: {keys}); expected a dict "
                              f"of tensors or one under {', '.join(STATE_DICT_KEYS)}")
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


_NOT_PLAIN = object()


def _plain(value, depth: int = 0):
    """`value` as JSON-like data (Namespace -> dict, Path -> str, numpy scalars -> numbers), or _NOT_PLAIN."""
    import argparse

    import numpy as np

    if depth > 20:
        return _NOT_PLAIN
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
            items = {str(k): _plain(v, depth + 1) for k, v in value.items()}
            return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items.values()) else items
        if isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, (bytes, bytearray)):
            items = [_plain(v, depth + 1) for v in value]
            return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    except Exception:  # e.g. an omegaconf interpolation that cannot resolve
        return _NOT_PLAIN
    return _NOT_PLAIN


class _Dcp:
    """A torch.distributed.checkpoint folder: shapes from `.metadata`, each tensor loaded on its own."""

    ordered = True  # the metadata lists items in the saved state dict's order

    def __init__(self, directory: Path, trust_pickle: bool):
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

        self.dir, self.trust_pickle = directory, trust_pickle
        self.md = read_dcp_metadata(directory, trust_pickle)
        entries = self.md.state_dict_metadata
        paths = {fqn: tuple(self.md.planner_data.get(fqn, (fqn,))) if self.md.planner_data else (fqn,)
                 for fqn in entries}
        self.tensor_md = {fqn: m for fqn, m in entries.items() if isinstance(m, TensorStorageMetadata)}
        self.fqn = _dcp_model_names({fqn: paths[fqn] for fqn in self.tensor_md})  # name -> fqn
        self.top_items = [fqn for fqn, m in entries.items()
                          if isinstance(m, BytesStorageMetadata) and len(paths[fqn]) == 1]

    def keys(self) -> list[str]:
        return list(self.fqn)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensor_md[self.fqn[key]].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensor_md[self.fqn[key]].properties.dtype

    def tensor(self, key: str) -> torch.Tensor:
        import torch

        fqn = self.fqn[key]
        out = {fqn: torch.empty(self.shape(key), dtype=self.dtype(key))}
        with _reading(self._file_of(fqn)):
            dcp_load(self.dir, out, self.trust_pickle, metadata=self.md)
        return out[fqn]

    def plain_items(self, keys=None) -> dict:
        wanted = [k for k in self.top_items if keys is None or k in keys]
        if not wanted:
            return {}
        out = dict.fromkeys(wanted)
        with _reading(self.dir):
            dcp_load(self.dir, out, self.trust_pickle, metadata=self.md)
        plain = {k: _plain(v) for k, v in out.items()}
        return {k: v for k, v in plain.items() if v is not _NOT_PLAIN}

    def metadata(self, lightning: bool = False) -> dict:
        return self.plain_items()

    def param_order(self) -> list[str]:
        return []

    def _file_of(self, fqn: str) -> Path:
        info = next((v for k, v in self.md.storage_data.items() if k.fqn == fqn), None)
        return self.dir / info.relative_path if info is not None else self.dir

    def close(self) -> None:
        pass


def _dcp_model_names(paths: dict[str, tuple]) -> dict[str, str]:
    """name -> fqn for the model's tensors. A state dict saved as {"model": sd, ...} (or under state_dict/
    model_state_dict/module, possibly one level down as in {"app": {"model": ...}}) is unnested, which also
    leaves optimizer tensors out; otherwise every tensor keeps its flattened name."""
    for depth in (0, 1):
        for key in STATE_DICT_KEYS:
            prefix = next((p[: depth + 1] for p in paths.values() if len(p) > depth + 1 and p[depth] == key), None)
            if prefix is not None:
                return {".".join(map(str, p[depth + 1:])): fqn for fqn, p in paths.items() if p[: depth + 1] == prefix}
    return {fqn: fqn for fqn, p in paths.items() if not _NOT_MODEL_ENTRY.search(str(p[0]))}
