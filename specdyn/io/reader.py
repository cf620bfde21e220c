"""Read one checkpoint tensor by tensor, whatever its format, with names in depth order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from specdyn.errors import CheckpointError
from specdyn.io.base import Checkpoint, natural_key, strip_prefixes
from specdyn.io.registry import FORMATS

if TYPE_CHECKING:
    import torch


class CheckpointReader:
    """Reads one checkpoint tensor by tensor (safetensors safe_open, torch.load mmap=True, DCP per-item loads), so
    memory stays near one tensor plus whatever the caller keeps. Use as a context manager."""

    def __init__(self, ckpt: Checkpoint, trust_pickle: bool = False):
        self.checkpoint = ckpt
        self.trust_pickle = trust_pickle
        self._format = FORMATS[ckpt.format]
        if ckpt.base is not None and hasattr(self._format, "open_on"):
            self._source = self._format.open_on(ckpt.path, ckpt.base, FORMATS[ckpt.base.format], trust_pickle)
        else:
            self._source = self._format.open(ckpt.path, trust_pickle)
        self._raw = self._index()  # stripped name -> the source's key, in depth order

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

    @property
    def ordered(self) -> bool:
        """Whether names() is the registration order (else a natural sort of the names)."""
        return bool(self._source.ordered or self._source.param_order())

    def aliases(self) -> dict[str, str]:
        """Tensors that share storage with an earlier one (where the format can tell: torch files) -> its name."""
        found = self._source.aliases() if hasattr(self._source, "aliases") else {}
        name = {key: n for n, key in self._raw.items()}
        return {name[a]: name[c] for a, c in found.items() if a in name and c in name}

    def shape(self, name: str) -> tuple[int, ...]:
        return self._source.shape(self._key(name))

    def dtype(self, name: str) -> torch.dtype:
        return self._source.dtype(self._key(name))

    def dtype_name(self, name: str) -> str:
        """torch's name of the dtype ("bfloat16", "int64"), without importing torch where the format allows."""
        key = self._key(name)
        if hasattr(self._source, "dtype_name"):
            return self._source.dtype_name(key)
        return str(self._source.dtype(key)).removeprefix("torch.")

    def is_float(self, name: str) -> bool:
        """A floating-point tensor (the only kind analyzed): not int, bool or complex."""
        return self.dtype_name(name).startswith(("float", "bfloat"))

    def array(self, name: str, block: tuple[int, int] | None = None):
        """One tensor as a numpy array for the SVDs: read without torch where the format allows (safetensors;
        bfloat16 arrives as float32), else through torch (float8 and others numpy lacks arrive as float32).
        `block = (i, n)`: only block i of the leading axis viewed as n blocks (one expert of a stack), read alone
        where the format allows (safetensors; a memory-mapped torch file touches only its pages)."""
        key = self._key(name)
        src = self._source
        if block is None:
            out = src.array(key) if hasattr(src, "array") else None
        else:
            out = src.array(key, block) if getattr(src, "reads_blocks", False) else None
        if out is None:
            t = self._source.tensor(key).detach()
            if block is not None:
                t = t.reshape(block[1], -1, *t.shape[1:])[block[0]]
            out = t.float().numpy()
        return out

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor on CPU in its stored dtype (bf16 stays bf16; the caller upcasts)."""
        return self._source.tensor(self._key(name))

    def metadata(self) -> dict:
        """Plain-data metadata: specdyn safetensors {"step", "task", "config", "param_order", ...} (JSON parsed);
        HF {"config", "trainer_state"}; Lightning {"hyper_parameters", "epoch", "global_step", ...}; torch files
        their plain top-level entries (nanoGPT's "model_args", "iter_num", ...); DCP its top-level plain items."""
        return self._format.metadata(self.checkpoint.path, self._source)

    def unchanged(self, name: str) -> bool:
        """Whether the tensor is its base model's as it is (a PEFT adapter that does not touch it)."""
        return bool(getattr(self._source, "unchanged", lambda key: False)(self._key(name)))

    def delta(self, name: str):
        """An adapter's ΔW of the tensor in stored orientation (see io.adapters.AdapterSource.delta), or
        NotImplemented where the checkpoint is not an adapter (the caller subtracts the base)."""
        if not hasattr(self._source, "delta"):
            return NotImplemented
        return self._source.delta(self._key(name))

    def close(self) -> None:
        self._source.close()

    def _key(self, name: str) -> str:
        try:
            return self._raw[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a tensor of {self.checkpoint.path}") from None

    def _index(self) -> dict[str, str]:
        raw: dict[str, str] = {}
        for key in self._source.keys():
            name = strip_prefixes(key)
            if name in raw:
                raise CheckpointError(
                    f"{self.checkpoint.path}: tensors {raw[name]!r} and {key!r} are both "
                    f"{name!r} once the module./_orig_mod. prefixes are stripped"
                )
            raw[name] = key
        if self._source.ordered:
            return raw
        listed = self._source.param_order()
        rank = {n: i for i, n in enumerate(listed)} if listed else {}
        rank.update({strip_prefixes(n): i for n, i in list(rank.items())})
        order = sorted(raw, key=lambda n: (rank.get(n, len(rank)), natural_key(n)))
        return {n: raw[n] for n in order}
