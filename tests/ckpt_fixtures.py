"""Tiny checkpoint series written by each format's own library (safetensors, torch, transformers, lightning, DCP).

The model registers `conv`, then eleven `blocks`, then `head`, so registration order, natural order
("blocks.2" < "blocks.10") and plain string order all differ: tests can tell which one a reader used.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv (2x1x3x3) -> 8 features -> blocks.0 (4x8) -> blocks.1..10 (4x4) -> head (8x4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.blocks = nn.ModuleList([nn.Linear(8, 4)] + [nn.Linear(4, 4) for _ in range(10)])
        self.head = nn.Linear(4, 8)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.head(h)


def tiny_state(seed: int = 0, dtype: torch.dtype | None = None) -> OrderedDict:
    """A TinyNet state dict with weights drawn from `seed` (optionally cast)."""
    torch.manual_seed(seed)
    sd = TinyNet().state_dict()
    return OrderedDict((k, v.to(dtype) if dtype else v.clone()) for k, v in sd.items())


def write_specdyn_safetensors(
    path: Path, step: int, seed: int | None = None, dtype=None, *, metadata: bool = True, param_order: bool = True
) -> OrderedDict:
    """A file laid out as `specdyn train` writes them: metadata step/task/config/param_order (JSON strings)."""
    from safetensors.torch import save_file

    sd = tiny_state(step if seed is None else seed, dtype)
    meta = None
    if metadata:
        meta = {"step": str(step), "task": "tiny", "config": json.dumps({"width": 4, "lr": 0.1})}
        if param_order:
            meta["param_order"] = json.dumps(list(sd))
    save_file(dict(sd), str(path), metadata=meta)
    return sd


def write_torch(path: Path, obj, legacy: bool = False) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def write_dcp(directory: Path, state: dict) -> None:
    """torch.distributed.checkpoint.save in one process, no process group."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(directory))


def tiny_gpt2(seed: int):
    """A 2-layer GPT-2 with 8-wide embeddings built from a config (nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=16, n_positions=8, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def write_hf_checkpoint(folder: Path, step: int, layout: str = "single", trainer_state: bool = True):
    """A Trainer-style checkpoint-<step>/ folder; layout: single | sharded | bin | bin_sharded.

    Returns the model's state dict as saved (tied lm_head dropped, as transformers does).
    """
    from transformers import TrainerState

    model = tiny_gpt2(step)
    folder.mkdir(parents=True)
    if layout in ("single", "sharded"):
        model.save_pretrained(folder, max_shard_size="1KB" if layout == "sharded" else "50GB")
    else:  # transformers 5 no longer writes .bin; this is what 4.x wrote with safe_serialization=False
        model.config.save_pretrained(folder)
        sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        if layout == "bin":
            torch.save(sd, folder / "pytorch_model.bin")
        else:
            keys = list(sd)
            shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
                torch.save({k: sd[k] for k in shard}, folder / name)
                weight_map.update(dict.fromkeys(shard, name))
            (folder / "pytorch_model.bin.index.json").write_text(
                json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
            )
    if trainer_state:
        TrainerState(global_step=step, max_steps=1000).save_to_json(str(folder / "trainer_state.json"))
    # Trainer's other files, which are not weights.
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    torch.save({"lr": 0.1}, folder / "training_args.bin")
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def write_lightning_run(run_dir: Path, max_steps: int = 3, **hparams) -> Path:
    """Trainer.fit a tiny LightningModule for `max_steps`, saving every step plus last.ckpt."""
    import logging
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class TinyModule(L.LightningModule):
        def __init__(self, **kwargs):
            super().__init__()
            self.save_hyperparameters()
            self.model = TinyNet()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 4, 4), torch.randint(0, 8, (8,)))
    checkpoint = ModelCheckpoint(dirpath=run_dir, save_top_k=-1, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyModule(**hparams), torch.utils.data.DataLoader(data, batch_size=2))
    return run_dir


def truncate(path: Path) -> Path:
    """Cut a file in half, as an interrupted copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
