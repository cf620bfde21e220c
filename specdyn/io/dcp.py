"""torch.distributed.checkpoint (DCP) folders (`.metadata` + `*.distcp`), also as FSDP saves them inside an HF
Trainer folder (`checkpoint-N/pytorch_model_fsdp_0/`). Shapes come from `.metadata`; each tensor loads alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from specdyn.io.base import STATE_DICT_KEYS, STEP_KEYS, CheckpointFormat, best_effort, reading, step_from_name, step_in
from specdyn.io.hf import trainer_metadata, trainer_step
from specdyn.io.safeload import dcp_load, read_dcp_metadata
from specdyn.io.torch_file import NOT_MODEL_ENTRY, NOT_PLAIN, plain

if TYPE_CHECKING:
    import torch


def _in_trainer_folder(path: Path) -> bool:
    """An FSDP save inside an HF Trainer checkpoint folder (its step and metadata are the folder's)."""
    return path.parent.name.startswith("checkpoint-")


class DcpFormat(CheckpointFormat):
    name = "dcp"
    describe = "torch.distributed.checkpoint folders (.metadata + *.distcp)"

    def claim_dir(self, path: Path, inside_series: bool) -> Path | None:
        if (path / ".metadata").is_file():
            return path
        fsdp = sorted(s for s in path.glob("pytorch_model_fsdp_*") if (s / ".metadata").is_file())
        trainer = path.name.startswith("checkpoint-") or (not inside_series and (path / "trainer_state.json").is_file())
        if fsdp and trainer:
            return fsdp[0]
        return None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        if path.parent != run_dir and _in_trainer_folder(path):
            return trainer_step(path.parent)
        with best_effort():
            return step_in(DcpSource(path, trust_pickle=False).plain_items(STEP_KEYS))
        return None

    def step_from_name(self, path: Path) -> int | None:
        return step_from_name(path.parent.name if _in_trainer_folder(path) else path.name)

    def open(self, path: Path, trust_pickle: bool) -> DcpSource:
        return DcpSource(path, trust_pickle)

    def metadata(self, path: Path, source: DcpSource) -> dict:
        return trainer_metadata(path.parent) if _in_trainer_folder(path) else source.metadata()


class DcpSource:
    """A DCP folder's tensors, each loaded on its own."""

    ordered = True  # the metadata lists items in the saved state dict's order

    def __init__(self, directory: Path, trust_pickle: bool):
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

        self.dir, self.trust_pickle = directory, trust_pickle
        self.md = read_dcp_metadata(directory, trust_pickle)
        entries = self.md.state_dict_metadata
        paths = {
            fqn: tuple(self.md.planner_data.get(fqn, (fqn,))) if self.md.planner_data else (fqn,) for fqn in entries
        }
        self.tensor_md = {fqn: m for fqn, m in entries.items() if isinstance(m, TensorStorageMetadata)}
        self.fqn = _model_names({fqn: paths[fqn] for fqn in self.tensor_md})  # name -> fqn
        self.top_items = [
            fqn for fqn, m in entries.items() if isinstance(m, BytesStorageMetadata) and len(paths[fqn]) == 1
        ]

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
        with reading(self._file_of(fqn)):
            dcp_load(self.dir, out, self.trust_pickle, metadata=self.md)
        return out[fqn]

    def plain_items(self, keys=None) -> dict:
        wanted = [k for k in self.top_items if keys is None or k in keys]
        if not wanted:
            return {}
        out = dict.fromkeys(wanted)
        with reading(self.dir):
            dcp_load(self.dir, out, self.trust_pickle, metadata=self.md)
        values = {k: plain(v) for k, v in out.items()}
        return {k: v for k, v in values.items() if v is not NOT_PLAIN}

    def metadata(self) -> dict:
        return self.plain_items()

    def param_order(self) -> list[str]:
        return []

    def _file_of(self, fqn: str) -> Path:
        info = next((v for k, v in self.md.storage_data.items() if k.fqn == fqn), None)
        return self.dir / info.relative_path if info is not None else self.dir

    def close(self) -> None:
        pass


def _model_names(paths: dict[str, tuple]) -> dict[str, str]:
    """name -> fqn for the model's tensors. A state dict saved as {"model": sd, ...} (or under state_dict/
    model_state_dict/module, possibly one level down as in {"app": {"model": ...}}) is unnested, which also
    leaves optimizer tensors out; otherwise every tensor keeps its flattened name."""
    for depth in (0, 1):
        for key in STATE_DICT_KEYS:
            prefix = next((p[: depth + 1] for p in paths.values() if len(p) > depth + 1 and p[depth] == key), None)
            if prefix is not None:
                return {".".join(map(str, p[depth + 1 :])): fqn for fqn, p in paths.items() if p[: depth + 1] == prefix}
    return {fqn: fqn for fqn, p in paths.items() if not NOT_MODEL_ENTRY.search(str(p[0]))}
