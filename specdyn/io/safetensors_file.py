"""safetensors checkpoints: `*.safetensors` files (specdyn's own format), and the reader HF folders share.

safetensors sorts its entries by name, so registration order survives only through specdyn's `param_order`
metadata; other files fall back to a natural sort. Headers are parsed without touching tensor data.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from specdyn.errors import CheckpointError
from specdyn.io.base import CheckpointFormat, Saved, as_step, best_effort, parse_json, reading

if TYPE_CHECKING:
    import torch

MAX_HEADER = 100_000_000  # bytes; a longer header is damage, not a model


def parse_header(raw: bytes) -> tuple[dict, int]:
    """The JSON header at the start of safetensors bytes, and the offset where tensor data begins."""
    (length,) = struct.unpack("<Q", raw[:8])
    if length > MAX_HEADER:
        raise ValueError(f"implausible safetensors header length {length}")
    return json.loads(raw[8 : 8 + length]), 8 + length


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, read without touching tensor data."""
    with open(path, "rb") as f:
        head = f.read(8)
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER:
            raise ValueError(f"implausible safetensors header length {length}")
        return parse_header(head + f.read(length))[0]


def expected_size(path: Path) -> int | None:
    """The size a safetensors file has once fully written (8 + header + the end of its last tensor's data), from
    its header; None if the header cannot be read yet."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER:
                return None
            header = json.loads(f.read(length))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError, AttributeError):
        return None
    return 8 + length + max(ends, default=0)


def save_file(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` with the metadata in a fixed order.

    The library writes metadata from a hash map whose order changes from run to run, so two identical runs
    would differ in their bytes; rewriting the header (same tensors, same offsets) makes files reproducible.
    The library writes the file itself (no copy of the tensor bytes in Python); the reordered header has the same
    length, so it is rewritten in place.
    """
    from safetensors.torch import save_file as library_save_file

    library_save_file(state_dict, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header = {"__metadata__": dict(metadata), **{k: v for k, v in header.items() if k != "__metadata__"}}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        if len(encoded) == length:
            f.seek(8)
            f.write(encoded)
            return
    _save_rewritten(state_dict, path, metadata)  # a header of another length: write the whole file again


def _save_rewritten(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    raw = save(state_dict, metadata=metadata)
    header, data_start = parse_header(raw)
    header = {"__metadata__": dict(metadata), **{k: v for k, v in header.items() if k != "__metadata__"}}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        f.write(memoryview(raw)[data_start:])  # no copy of the tensor bytes


# safetensors dtype codes -> torch's dtype names (torch.<name>), so headers are read without importing torch.
DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "U16": "uint16", "U32": "uint32", "U64": "uint64",
}  # fmt: skip
# The codes numpy reads as they are (bfloat16 is read as its 16 bits and widened: it is the top half of a float32).
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                "I8": "i1", "U8": "u1", "BOOL": "?", "U16": "<u2", "U32": "<u4", "U64": "<u8"}  # fmt: skip


def _dtype(code: str):
    """torch dtype of a safetensors header dtype code."""
    import torch

    return getattr(torch, DTYPE_NAMES[code])


def _header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, header entries) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def _entry(path: Path, key: str, header: tuple[int, dict], itemsize: int, block=None) -> tuple[int, int, tuple]:
    """(file offset, byte size, shape) of one tensor, its size checked against its shape; with `block = (i, n)`,
    of block i of its leading axis viewed as n blocks (one expert of a stack: contiguous bytes)."""
    start, entries = header
    entry = entries[key]
    begin, end = entry["data_offsets"]
    shape, size = tuple(entry["shape"]), end - begin
    numel = 1
    for d in shape:
        numel *= d
    if size != numel * itemsize:
        raise CheckpointError(f"{path}: tensor {key!r} has {size} bytes for shape {list(shape)}; the file is damaged")
    if block is not None:
        i, n = block
        size //= n
        begin += i * size
        shape = (shape[0] // n, *shape[1:])
    return start + begin, size, shape


def _read_into(f, path: Path, key: str, view: memoryview) -> None:
    if f.readinto(view) != len(view):
        raise CheckpointError(f"{path}: truncated (tensor {key!r} ends past the end of the file); re-copy it")


def _pread(path: Path, key: str, header: tuple[int, dict], itemsize: int, alloc=None, block=None):
    """The bytes of one tensor (a uint8 numpy buffer of their own, from `alloc(nbytes)` if given, filled by one
    read) and its shape; `block`: only that block of its leading axis (_entry)."""
    import numpy as np

    offset, size, shape = _entry(path, key, header, itemsize, block)
    buf = alloc(size) if alloc else np.empty(size, dtype=np.uint8)
    if size:
        with open(path, "rb") as f:
            f.seek(offset)
            _read_into(f, path, key, memoryview(buf))
    return buf, shape


def _pread_tensor(path: Path, key: str, header: tuple[int, dict]):
    import torch

    dtype = _dtype(header[1][key]["dtype"])
    buf, shape = _pread(path, key, header, torch.empty(0, dtype=dtype).element_size())
    if not buf.size:  # torch cannot view an empty byte buffer as another dtype
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(buf).view(dtype).reshape(shape)


# bfloat16 is read in pieces of this many bytes and widened piece by piece, so no whole-tensor copy of its
# 16-bit form is ever held (262 MB for a 32000 x 4096 embedding).
WIDEN_BYTES = 16 << 20


def _pread_array(path: Path, key: str, header: tuple[int, dict], block=None):
    """One tensor (or one block of its leading axis, _entry) as a numpy array without torch, in reused buffers
    (io.buffers), bfloat16 widened to float32; None for dtypes numpy lacks."""
    import numpy as np

    from specdyn.io.buffers import POOL

    code = header[1][key]["dtype"]
    if code not in NUMPY_DTYPES:
        return None
    dtype = np.dtype(NUMPY_DTYPES[code])
    if code != "BF16":
        buf, shape = _pread(path, key, header, dtype.itemsize, POOL.take, block)
        return buf.view(dtype).reshape(shape)
    offset, size, shape = _entry(path, key, header, 2, block)
    wide = POOL.take(size * 2).view(np.uint32)
    piece = POOL.take(min(size, WIDEN_BYTES))
    with open(path, "rb") as f:
        f.seek(offset)
        for at in range(0, size, WIDEN_BYTES):
            n = min(WIDEN_BYTES, size - at)
            _read_into(f, path, key, memoryview(piece)[:n])
            # a bfloat16 is the top half of the float32 of the same value
            np.left_shift(piece[:n].view("<u2"), 16, out=wide[at // 2 : (at + n) // 2], dtype=np.uint32)
    return wide.view(np.float32).reshape(shape)


class SafetensorsSource:
    """One safetensors file, or a sharded set (name -> shard file); each file opened lazily with safe_open."""

    ordered = False  # safetensors sorts its entries; registration order only via param_order metadata
    reads_blocks = True  # array(key, block) reads one block of the leading axis alone

    def __init__(self, weight_map: dict[str, Path]):
        self.weight_map = weight_map
        self._handles: dict[Path, object] = {}
        self._headers: dict[Path, tuple[int, dict]] = {}
        self._single: Path | None = None

    @classmethod
    def file(cls, path: Path) -> SafetensorsSource:
        source = cls({})
        source._single = path
        source.weight_map = {k: path for k in source._open(path).keys()}
        return source

    def _open(self, path: Path):
        if path not in self._handles:
            from safetensors import safe_open

            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in the index is missing")
            with reading(path):
                # numpy: the header is validated by safetensors without importing torch (tensors are read here)
                self._handles[path] = safe_open(str(path), framework="numpy")
        return self._handles[path]

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, key: str) -> tuple[int, ...]:
        path = self.weight_map[key]
        with reading(path):
            return tuple(self._open(path).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        code = self._code(key)
        try:
            return _dtype(code)
        except KeyError:  # a dtype code newer than this table: ask torch
            return self.tensor(key).dtype

    def dtype_name(self, key: str) -> str:
        """torch's name of the tensor's dtype, without importing torch."""
        code = self._code(key)
        return DTYPE_NAMES[code] if code in DTYPE_NAMES else str(self.dtype(key)).removeprefix("torch.")

    def _code(self, key: str) -> str:
        path = self.weight_map[key]
        with reading(path):
            return self._open(path).get_slice(key).get_dtype()

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor read with one pread into its own buffer, not through safetensors' memory map: a mapped
        page stays in the process's resident set while the file is open, so reading a 13.5 GB checkpoint
        through the map would grow the RSS by the whole file; this way it grows by one tensor at a time."""
        path = self.weight_map[key]
        with reading(path):
            self._open(path)  # validates the header (safetensors' own checks)
            return _pread_tensor(path, key, self._headers.setdefault(path, _header(path)))

    def array(self, key: str, block: tuple[int, int] | None = None):
        """The tensor (or block i of n of its leading axis) as a numpy array (bfloat16 as float32), read as
        `tensor` reads it but without torch; None for a dtype numpy lacks (float8), which `tensor` reads."""
        path = self.weight_map[key]
        with reading(path):
            self._open(path)
            return _pread_array(path, key, self._headers.setdefault(path, _header(path)), block)

    def metadata(self) -> dict:
        if self._single is None:
            return {}
        with reading(self._single):
            raw = self._open(self._single).metadata() or {}
        return {k: parse_json(v) for k, v in raw.items()}

    def param_order(self) -> list[str]:
        order = self.metadata().get("param_order")
        return [n for n in order if isinstance(n, str)] if isinstance(order, list) else []

    def close(self) -> None:
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                handle.__exit__(None, None, None)
        self._handles.clear()


class SafetensorsFormat(CheckpointFormat):
    name = "safetensors"
    describe = "*.safetensors files"
    writable = True

    def claim_file(self, path: Path) -> Path | None:
        return path if path.suffix == ".safetensors" else None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        with best_effort():
            return as_step(read_header(path).get("__metadata__", {}).get("step"))
        return None

    def open(self, path: Path, trust_pickle: bool) -> SafetensorsSource:
        return SafetensorsSource.file(path)

    def checkpoint_name(self, step: int, epoch: int = 0) -> str:
        return f"step_{step:06d}.safetensors"

    def write(self, path: Path, ckpt: Saved) -> None:
        """Metadata: step, task, config (JSON), param_order (JSON, state_dict order, buffers included), format pt."""
        meta = {"step": str(ckpt.step), "task": ckpt.task, "config": json.dumps(ckpt.config),
                "param_order": json.dumps(list(ckpt.state_dict)), "format": "pt"}  # fmt: skip
        save_file(ckpt.state_dict, path, meta)
