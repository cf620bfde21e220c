"""Hugging Face model folders: `checkpoint-<step>/` from the Trainer, or any folder with `config.json` and
`model.safetensors`, sharded `model-*-of-*.safetensors` with their index, or `pytorch_model.bin` (+ index)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from specdyn.errors import CheckpointError
from specdyn.io.base import (
    CheckpointFormat,
    Saved,
    TensorSource,
    as_step,
    read_json,
    reading,
    step_from_name,
    write_json,
)
from specdyn.io.safetensors_file import SafetensorsSource, save_file
from specdyn.io.torch_file import TorchSource

if TYPE_CHECKING:
    pass

WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
FINAL_MODEL = ("model.safetensors", "pytorch_model.bin")  # what Trainer.save_model writes next to checkpoint-*/


def weights_file(folder: Path) -> Path | None:
    return next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)


def shard_path(folder: Path, name: str) -> Path:
    """The file a shard index names, which must be a relative path inside `folder` (where it leads after
    symlinks is checked by `read_index`)."""
    rel = PurePosixPath(name)
    if not rel.parts or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise CheckpointError(f"{folder}: the shard index names {name!r}, which is not a file inside this folder")
    return folder / rel


def trainer_step(folder: Path) -> int | None:
    return as_step(read_json(folder / "trainer_state.json").get("global_step"))


def trainer_metadata(folder: Path) -> dict:
    """{"config": config.json, "trainer_state": trainer_state.json} where present."""
    return {
        key: data
        for key, name in (("config", "config.json"), ("trainer_state", "trainer_state.json"))
        if (data := read_json(folder / name))
    }


def read_index(index: Path, folder: Path) -> dict[str, Path]:
    """tensor name -> shard file of a `*.index.json`, validated: a JSON object whose `weight_map` maps names to
    relative file names, every one of which resolves (after symlinks) inside the checkpoint folder, or inside
    the hub cache's `blobs/` of the same repo (`models--org--name/snapshots/<sha>/` links there)."""
    with reading(index, "shard index"):
        doc = json.loads(index.read_text())
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index}: not a shard index (needs a non-empty "weight_map" object of name: file)')
    allowed = _allowed_roots(folder)
    shards = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name or not isinstance(key, str):
            raise CheckpointError(f"{index}: weight_map entry {key!r}: {name!r} is not a shard file name")
        shard = shard_path(folder, name)  # a relative name inside the folder
        try:
            target = shard.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise CheckpointError(f"{index}: shard {name!r} cannot be resolved ({e})") from None
        if not any(target.is_relative_to(root) for root in allowed):  # a symlink leading out
            raise CheckpointError(
                f"{index}: shard {name!r} (for {key!r}) lies outside the checkpoint folder; refusing to read it"
            )
        shards[key] = shard
    return shards


def _allowed_roots(folder: Path) -> list[Path]:
    """Where a checkpoint folder's files may live: the folder, and for a hub cache snapshot its repo's blobs/."""
    roots = [folder.resolve()]
    snapshots = folder.absolute().parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith(("models--", "datasets--")):
        roots.append((snapshots.parent / "blobs").resolve())
    return roots


class HFFormat(CheckpointFormat):
    name = "hf"
    describe = (
        "Hugging Face checkpoint-<step>/ folders (model.safetensors, sharded model-*-of-*.safetensors + "
        "index, pytorch_model.bin)"
    )
    writable = True
    writes_folder = True

    def claim_dir(self, path: Path, inside_series: bool) -> Path | None:
        if inside_series and not (
            path.name.startswith("checkpoint-") or step_from_name(path.name, explicit_only=True) is not None
        ):
            return None  # inside a run dir only checkpoint-N/ and stepN/ folders (e.g. symlinks to snapshots)
        weights = weights_file(path)
        if weights and (
            weights.name.endswith(".index.json")
            or (path / "config.json").is_file()
            or (path / "trainer_state.json").is_file()
            or path.name.startswith("checkpoint-")
        ):
            return path
        return None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        return trainer_step(path)

    def open(self, path: Path, trust_pickle: bool) -> TensorSource:
        weights = weights_file(path)
        if weights is None:
            raise CheckpointError(f"{path}: no model weights ({' or '.join(WEIGHTS)}) in this folder")
        if weights.name.endswith(".index.json"):
            shards = read_index(weights, path)
            if weights.name.startswith("model.safetensors"):
                return SafetensorsSource(shards)
            return TorchSource(sorted(set(shards.values())), trust_pickle)  # HF shards in state-dict order
        if weights.suffix == ".safetensors":
            return SafetensorsSource.file(weights)
        return TorchSource([weights], trust_pickle)

    def metadata(self, path: Path, source: TensorSource) -> dict:
        return trainer_metadata(path)

    def checkpoint_name(self, step: int, epoch: int = 0) -> str:
        return f"checkpoint-{step}"

    def write(self, path: Path, ckpt: Saved) -> None:
        """model.safetensors ({"format": "pt"} only, as Hugging Face writes), trainer_state.json, config.json."""
        if path.exists():
            shutil.rmtree(path)
        path.mkdir()
        save_file(ckpt.state_dict, path / "model.safetensors", {"format": "pt"})
        hf_config = {"specdyn_task": ckpt.task, **ckpt.config}
        if "n_heads" in ckpt.config:
            hf_config["num_attention_heads"] = ckpt.config["n_heads"]
        write_json(path / "config.json", hf_config)
        state = {"global_step": ckpt.step, "epoch": ckpt.epoch, "log_history": ckpt.history or []}
        write_json(path / "trainer_state.json", state)
