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
    return as_step(read_inside(folder, "trainer_state.json").get("global_step"))


def trainer_metadata(folder: Path) -> dict:
    """{"config": config.json, "trainer_state": trainer_state.json} where present."""
    return {
        key: data
        for key, name in (("config", "config.json"), ("trainer_state", "trainer_state.json"))
        if (data := read_inside(folder, name))
    }


def read_inside(folder: Path, name: str) -> dict:
    """A JSON file of the folder (`read_json`), or {} when it leads outside the folder (see `allowed_roots`)."""
    path = folder / name
    if not path.is_file():
        return {}
    try:
        check_inside(path, folder, name)
    except CheckpointError as e:
        from specdyn.console import warn

        warn(f"{e}; not read", kind="files outside their checkpoint")
        return {}
    return read_json(path)


def check_inside(path: Path, folder: Path, what: str) -> None:
    """Refuse a file of a checkpoint folder whose symlinks lead outside `allowed_roots(folder)`."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise CheckpointError(f"{path}: {what} cannot be resolved ({e})") from None
    if not any(target.is_relative_to(root) for root in allowed_roots(folder)):
        raise CheckpointError(
            f"{path}: {what} leads outside the checkpoint folder{' and its hub blobs/' if _snapshot(folder) else ''} "
            f"(to {target}); refusing to read it"
        )


def read_index(index: Path, folder: Path) -> dict[str, Path]:
    """tensor name -> shard file of a `*.index.json`, validated: a JSON object whose `weight_map` maps names to
    relative file names, every one of which resolves (after symlinks) inside the checkpoint folder, or inside
    the hub cache's `blobs/` of the same repo (`models--org--name/snapshots/<sha>/` links there)."""
    with reading(index, "shard index"):
        doc = json.loads(index.read_text())
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index}: not a shard index (needs a non-empty "weight_map" object of name: file)')
    allowed = allowed_roots(folder)
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


def _snapshot(folder: Path) -> bool:
    """Whether a folder is a hub cache snapshot (`models--org--name/snapshots/<commit>`), by its path."""
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(("models--", "datasets--"))


def allowed_roots(folder: Path) -> list[Path]:
    """Where a checkpoint folder's files may lead: the folder; for a hub cache snapshot, its own folder in the
    cache and its repo's blobs/ (not another repo's). A snapshot folder that is itself a link (or lies in a
    linked snapshots/) is refused: huggingface_hub makes them real folders. A link the user made to a snapshot
    (a run dir of `stepN` links) is that snapshot."""
    folder = folder.absolute()
    if _snapshot(folder):
        repo = folder.parent.parent.resolve()
        real = repo / "snapshots" / folder.name
        if folder.resolve() != real:
            raise CheckpointError(
                f"{folder}: this hub snapshot is a symbolic link (to {folder.resolve()}); a hub cache's snapshots "
                "are its own folders: refusing to read it"
            )
        return [real, repo / "blobs"]
    resolved = folder.resolve()
    return [resolved, resolved.parent.parent / "blobs"] if _snapshot(resolved) else [resolved]


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
        check_inside(weights, path, "the weights file")  # as read_index checks every shard
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
