"""Lightning `*.ckpt` files: a pickled dict with `state_dict` (keys prefixed by the LightningModule's attributes),
`global_step`, `epoch` and `hyper_parameters`. `last.ckpt` and `-vN` copies duplicate another checkpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from specdyn.io.base import Saved, step_from_name
from specdyn.io.torch_file import TorchFormat, TorchSource

if TYPE_CHECKING:
    pass

META_KEYS = (
    "hyper_parameters",
    "datamodule_hyper_parameters",
    "hparams_name",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)
_VERSIONED = re.compile(r"(.+)-v\d+")


class LightningFormat(TorchFormat):
    name = "lightning"
    describe = "Lightning *.ckpt"

    def claim_file(self, path: Path) -> Path | None:
        return path if path.suffix == ".ckpt" else None

    def skip_reason(self, path: Path, siblings: set[str]) -> str | None:
        stem = path.stem
        versioned = _VERSIONED.fullmatch(stem)
        if stem == "last" or (versioned and (versioned[1] == "last" or f"{versioned[1]}.ckpt" in siblings)):
            return f"{path.name} (Lightning's copy of another checkpoint)"
        return None

    def step_from_name(self, path: Path) -> int | None:
        # Lightning names carry epochs and metrics (best-epoch=14-val_loss=0.33): only an explicit step= counts.
        return step_from_name(path.name, explicit_only=True)

    def metadata(self, path: Path, source: TorchSource) -> dict:
        return source.metadata(META_KEYS)

    def checkpoint_name(self, step: int, epoch: int = 0) -> str:
        return f"epoch={epoch}-step={step}.ckpt"

    def write(self, path: Path, ckpt: Saved) -> None:
        """As a LightningModule holding the model as `self.model` saves it."""
        import torch

        state_dict = {f"model.{k}": v for k, v in ckpt.state_dict.items()}
        hparams = {"task": ckpt.task, **ckpt.config}
        torch.save({"state_dict": state_dict, "global_step": ckpt.step, "epoch": ckpt.epoch,
                    "hyper_parameters": hparams}, path)  # fmt: skip
