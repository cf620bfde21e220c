"""Read pickled checkpoints without running their code.

Policy: torch's `weights_only` loader, plus a short allowlist of inert types that real checkpoints carry in their
hyperparameters (argparse.Namespace, pathlib paths, numpy scalars and arrays, defaultdict, omegaconf containers);
anything else is refused with the offending globals named, unless the user passes --trust-pickle. Two helpers read
pickles that torch itself would unpickle unsafely: `peek_pickle` (a file's plain values, for its training step,
with every global replaced by an inert stand-in) and the DCP reader/planner (torch.distributed.checkpoint reads its
`.metadata` with plain `pickle.load` and its non-tensor items with `weights_only=False`).
"""

from __future__ import annotations

import builtins
import collections
import functools
import io
import pickle
import re
import zipfile
from pathlib import Path

from specdyn.errors import CheckpointError, SpecdynError, UnsafePickleError


def unreadable(path, exc: BaseException, what: str = "checkpoint") -> CheckpointError:
    """The one-line CheckpointError for a file that failed to load."""
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, MemoryError):  # not a damaged file: the tensors do not fit in this machine's memory
        return CheckpointError(
            f"{path}: not enough memory to read {what} (MemoryError); free memory or use a larger machine"
        )
    return CheckpointError(
        f"{path}: cannot read {what}, it may be truncated or corrupt ({type(exc).__name__}: {detail})"
    )


# --- the allowlist --------------------------------------------------------------------------------------------

_BUILTINS = (
    "int",
    "float",
    "complex",
    "bool",
    "str",
    "bytes",
    "bytearray",
    "list",
    "dict",
    "set",
    "frozenset",
    "tuple",
    "slice",
    "range",
)
_PATHS = ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")
_OMEGACONF = (
    "dictconfig.DictConfig",
    "listconfig.ListConfig",
    "base.ContainerMetadata",
    "base.Metadata",
    "nodes.AnyNode",
    "nodes.StringNode",
    "nodes.IntegerNode",
    "nodes.FloatNode",
    "nodes.BooleanNode",
    "nodes.BytesNode",
    "nodes.PathNode",
)


def _defaultdict_as_dict(default_factory=None, *args):
    """Stands in for collections.defaultdict, which torch's weights_only loader cannot fill: a plain dict."""
    return {}


@functools.cache
def inert_globals() -> dict[str, object]:
    """Pickle global name -> object for every type we let torch's weights_only loader rebuild.

    Each is data only: constructing it or setting its state cannot call user code. Callables such as
    functools.partial, user classes and enums are deliberately absent. A defaultdict comes back as a plain dict.
    """
    import argparse
    import pathlib
    import typing

    import numpy as np

    out: dict[str, object] = {
        "argparse.Namespace": argparse.Namespace,
        "collections.OrderedDict": collections.OrderedDict,
        "collections.defaultdict": _defaultdict_as_dict,
        "typing.Any": typing.Any,  # omegaconf stores it as a node's type
        "numpy.dtype": np.dtype,
        "numpy.ndarray": np.ndarray,
    }
    out.update({f"builtins.{n}": getattr(builtins, n) for n in _BUILTINS})
    for n in _PATHS:  # pathlib moved its classes to pathlib._local in Python 3.13
        out[f"pathlib.{n}"] = out[f"pathlib._local.{n}"] = getattr(pathlib, n)
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 and numpy 1 pickles
        out[f"{mod}.scalar"] = multiarray.scalar
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
    for n in dir(getattr(np, "dtypes", None)):
        cls = getattr(np.dtypes, n)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out[f"numpy.dtypes.{n}"] = cls
    try:
        import omegaconf
    except ImportError:
        return out
    for dotted in _OMEGACONF:
        mod, name = dotted.split(".")
        obj = getattr(getattr(omegaconf, mod, None), name, None)
        if obj is not None:
            out[f"omegaconf.{dotted}"] = obj
    return out


# --- torch.load ---------------------------------------------------------------------------------------------


def safe_torch_load(path, trust_pickle: bool = False, *, mmap: bool = True):
    """`torch.load` a file to CPU, memory-mapped, running no pickled code unless `trust_pickle`.

    Raises UnsafePickleError for globals outside `inert_globals()`, CheckpointError for anything unreadable.
    Legacy (pre-zip) files cannot be memory-mapped and are read whole.
    """
    import torch

    path = Path(path)
    try:
        use_mmap = mmap and zipfile.is_zipfile(path)
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=use_mmap)
        return _weights_only_load(path, path, use_mmap)
    except SpecdynError:
        raise
    except Exception as e:
        raise unreadable(path, e) from e


def safe_load_bytes(data: bytes, label, trust_pickle: bool = False):
    """The same policy for a torch.save payload held in memory (DCP stores non-tensor items this way)."""
    import torch

    try:
        if trust_pickle:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        return _weights_only_load(lambda: io.BytesIO(data), label, False)
    except SpecdynError:
        raise
    except Exception as e:
        raise unreadable(label, e) from e


def _weights_only_load(source, label, use_mmap: bool):
    """weights_only load; on refusal, retry once with the inert globals the file needs, or refuse."""
    import torch

    def load():
        f = source() if callable(source) else source
        return torch.load(f, map_location="cpu", weights_only=True, mmap=use_mmap)

    try:
        return load()
    except pickle.UnpicklingError as refused:
        needed = set(_globals_named_by(refused))
        needed |= {_canonical(g) for g in _unsafe_globals(source() if callable(source) else source)}
        if not needed:
            raise unreadable(label, refused) from refused
    allowed = inert_globals()
    # Each retry may reveal a type the static scan cannot see (numpy's per-dtype classes are built at load time).
    for _ in range(8):
        unsafe = sorted(g for g in needed if g not in allowed)
        if unsafe:
            raise UnsafePickleError(label, unsafe)
        with torch.serialization.safe_globals([(allowed[g], g) for g in sorted(needed)]):
            try:
                return load()
            except pickle.UnpicklingError as again:
                more = set(_globals_named_by(again)) - needed
                if not more:  # torch refuses something it cannot build even when allowed
                    raise UnsafePickleError(label, _globals_named_by(again) or sorted(needed)) from None
                needed |= more
    raise UnsafePickleError(label, sorted(needed))


def _globals_named_by(exc: BaseException) -> list[str]:
    """The globals a weights_only refusal names (torch words it two ways)."""
    text = str(exc)
    found = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", text)
    found += re.findall(r"but got <class '([\w.]+)'>", text)
    return [_canonical(g) for g in found]


def _canonical(name: str) -> str:
    """Python 3 spelling of a global: protocol-2 pickles say `__builtin__.long`, torch's messages a bare `int`."""
    import _compat_pickle

    if "." not in name:
        return f"builtins.{name}"
    module, _, attr = name.rpartition(".")
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"


def _unsafe_globals(f) -> list[str]:
    """Globals in a torch.save file that torch does not allow by default (zip files via torch, legacy via peek)."""
    import torch

    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(f)
    except ValueError:  # legacy format: torch only scans zip files
        if hasattr(f, "seek"):
            f.seek(0)
        _, named = peek_pickle(f)
        try:
            default = set(torch._weights_only_unpickler._get_allowed_globals())
        except Exception:  # private API moved: report everything, torch still enforces its own list
            default = set()
        return [_canonical(g) for g in named if g not in default]


# --- peeking at plain values without unpickling -------------------------------------------------------------


class _Inert:
    """Stand-in for every global in a peeked pickle: accepts any construction or state and does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _PeekUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.named: set[str] = set()

    def find_class(self, module, name):
        self.named.add(f"{module}.{name}")
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _Inert  # never imports, never calls the real object

    def persistent_load(self, pid):
        return _Inert()


def peek_pickle(f) -> tuple[object, list[str]]:
    """The structure of a torch.save file with plain values intact and everything else inert, plus the globals it
    names. Reads only the pickle (not tensor data); imports and calls nothing from the file.

    `f` is a path or a binary file object. Raises on a corrupt file.
    """
    import torch

    if isinstance(f, (str, Path)):
        with open(f, "rb") as fh:
            return peek_pickle(fh)
    if zipfile.is_zipfile(f):
        f.seek(0)
        with zipfile.ZipFile(f) as z:
            record = next((n for n in z.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)), None)
            if record is None:
                raise ValueError("a zip file without data.pkl is not a torch.save file")
            unpickler = _PeekUnpickler(io.BytesIO(z.read(record)))
            return unpickler.load(), sorted(unpickler.named)
    f.seek(0)
    unpickler = _PeekUnpickler(f)
    first = unpickler.load()
    if first == torch.serialization.MAGIC_NUMBER:  # legacy layout: magic, protocol, sys info, then the object
        unpickler.load()
        unpickler.load()
        first = unpickler.load()
    return first, sorted(unpickler.named)


# --- torch.distributed.checkpoint ---------------------------------------------------------------------------

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Rebuilds a DCP `.metadata` from torch's own metadata dataclasses and plain types only."""

    def find_class(self, module, name):
        import importlib

        import torch

        obj = None
        if module in _DCP_MODULES:
            candidate = getattr(importlib.import_module(module), name, None)
            if isinstance(candidate, type) and candidate.__module__ == module:
                obj = candidate
        elif module == "torch" and name == "Size":
            obj = torch.Size
        elif module == "torch":
            candidate = getattr(torch, name, None)
            if isinstance(candidate, (torch.dtype, torch.layout, torch.memory_format)):
                obj = candidate
        elif (module, name) == ("torch.serialization", "_get_layout"):
            obj = torch.serialization._get_layout
        else:
            obj = inert_globals().get(f"{module}.{name}")
        if obj is None:
            raise UnsafePickleError(self.label, [f"{module}.{name}"])
        return obj


def read_dcp_metadata(directory, trust_pickle: bool = False):
    """The `Metadata` of a torch.distributed.checkpoint directory, unpickled without running foreign code."""
    path = Path(directory) / ".metadata"
    try:
        with open(path, "rb") as f:
            if trust_pickle:
                return pickle.load(f)
            unpickler = _DcpMetadataUnpickler(f)
            unpickler.label = path
            return unpickler.load()
    except SpecdynError:
        raise
    except Exception as e:
        raise unreadable(path, e, "DCP metadata") from e


def dcp_load(directory, state_dict: dict, trust_pickle: bool = False, metadata=None) -> None:
    """Fill `state_dict` ({flat key: empty tensor or placeholder}) from a DCP directory, in place, in one process.

    Non-tensor items go through `safe_load_bytes`; tensors through torch's own weights_only reader.
    """
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = _dcp_reader_class()(directory)
    reader.metadata = metadata if metadata is not None else read_dcp_metadata(directory, trust_pickle)
    planner = _dcp_planner_class()(flatten_state_dict=False)
    planner.trust_pickle, planner.label = trust_pickle, Path(directory)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state_dict, storage_reader=reader, planner=planner, no_dist=True)
        except CheckpointException as e:  # a BaseException wrapping each rank's real error: surface ours
            raise next((exc for exc, _ in e.failures.values()), RuntimeError(str(e))) from None


@functools.cache
def _dcp_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        metadata = None

        def read_metadata(self, *args, **kwargs):  # torch's version is a bare pickle.load
            if getattr(self.metadata, "storage_meta", None) is None:
                self.metadata.storage_meta = StorageMeta()
            self.metadata.storage_meta.load_id = self.load_id
            return self.metadata

    return SafeReader


@functools.cache
def _dcp_planner_class():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):  # torch's version unpickles with weights_only=False
            fqn = read_item.dest_index.fqn
            label = f"{self.label} (item {fqn})"
            self.original_state_dict[fqn] = safe_load_bytes(value.read(), label, self.trust_pickle)

    return SafePlanner
