"""The checkpoint formats, in the order they claim a path: adding one is a module plus a line here."""

from specdyn.io.adapters import AdapterFormat
from specdyn.io.base import CheckpointFormat
from specdyn.io.dcp import DcpFormat
from specdyn.io.hf import HFFormat
from specdyn.io.hub import HubFormat
from specdyn.io.lightning import LightningFormat
from specdyn.io.safetensors_file import SafetensorsFormat
from specdyn.io.torch_file import TorchFormat

# Folders: DCP before HF (an HF folder may hold an FSDP save), hub snapshots before HF (a snapshot is an HF folder
# named by its commit), PEFT adapters before HF (a Trainer's checkpoint-N/ of a PEFT run); files: by suffix, so
# the order does not matter.
FORMATS: dict[str, CheckpointFormat] = {
    f.name: f
    for f in (
        DcpFormat(), HubFormat(), AdapterFormat(), HFFormat(), SafetensorsFormat(), LightningFormat(), TorchFormat()
    )
}  # fmt: skip

# Names `specdyn train --format` accepted before the formats had one name each.
ALIASES = {"lightning-style": "lightning", "hf-style": "hf"}


def get_format(name: str) -> CheckpointFormat:
    return FORMATS[ALIASES.get(name, name)]


def writable() -> list[str]:
    return [name for name, f in FORMATS.items() if f.writable]


def supported_layouts() -> str:
    return "; ".join(f.describe for f in FORMATS.values())


def claim_file(path):
    """(format, checkpoint path) of a file, or None."""
    for f in FORMATS.values():
        if (target := f.claim_file(path)) is not None:
            return f, target
    return None


def claim_dir(path, inside_series: bool = False):
    """(format, checkpoint path) of a folder, or None."""
    for f in FORMATS.values():
        if (target := f.claim_dir(path, inside_series)) is not None:
            return f, target
    return None
