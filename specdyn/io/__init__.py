"""Reading checkpoints: the format registry, discovery of a series, and tensor-by-tensor reading.

Formats: safetensors files, Hugging Face Trainer `checkpoint-<step>/` folders, Lightning `.ckpt`, plain
`torch.save` files and torch.distributed.checkpoint (DCP) folders, one module each (see `registry.FORMATS`).
Pickled formats go through `safeload`, so reading a checkpoint never runs code from it unless the user passes
--trust-pickle. Run metadata (run.json, training logs) is read and written by `runmeta`.
"""

from specdyn.errors import CheckpointError, UnsafePickleError
from specdyn.io.base import Checkpoint, CheckpointFormat, natural_key, step_from_name, strip_prefixes
from specdyn.io.discovery import discover, number_by_name, open_checkpoint
from specdyn.io.reader import CheckpointReader
from specdyn.io.registry import FORMATS, get_format, supported_layouts

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointReader",
    "UnsafePickleError",
    "discover",
    "get_format",
    "natural_key",
    "number_by_name",
    "open_checkpoint",
    "step_from_name",
    "strip_prefixes",
    "supported_layouts",
]
