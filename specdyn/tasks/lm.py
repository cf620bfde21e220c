"""`lm`: a small pre-LN transformer byte-level language model on Python's own standard-library sources.

The corpus is a fixed list of stdlib modules read from this interpreter's install (offline, nothing
downloaded), concatenated in that order and cut to `corpus_bytes`; its last `val_frac` is validation.
The stdlib differs between Python versions, so runs are reproducible for one Python version; run.json
records the corpus digest. Paper model (docs/method.md 4): pre-LN, FFN width = d_model, ReLU, no dropout,
untied decoder, AdamW with warmup + cosine, clipping 1.0; here 2 layers of width 128 instead of 12 of 768.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import sysconfig
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from specdyn.tasks.base import BuiltinTask, TrainConfig, seeded
from specdyn.tasks.transformer import Block, sinusoidal_positions

CORPUS_FILES = (
    "textwrap.py", "string.py", "shlex.py", "heapq.py", "bisect.py", "functools.py", "fractions.py",
    "statistics.py", "calendar.py", "argparse.py", "difflib.py", "json/decoder.py", "json/encoder.py",
    "pprint.py", "random.py", "csv.py", "glob.py", "fnmatch.py", "contextlib.py", "dataclasses.py",
)  # fmt: skip


@dataclasses.dataclass
class Config(TrainConfig):
    corpus_bytes: int = 300_000
    val_frac: float = 0.1
    context: int = 64
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 128
    n_layers: int = 2
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int = 100
    grad_clip: float = 1.0


def read_corpus(n_bytes: int) -> tuple[bytes, list[str]]:
    """The first n_bytes of the concatenated CORPUS_FILES that exist in this Python's stdlib."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, used = [], []
    for name in CORPUS_FILES:
        path = root / name
        if path.is_file():
            chunks.append(path.read_bytes())
            used.append(name)
    data = b"".join(chunks)[:n_bytes]
    if len(data) < 10_000:
        raise FileNotFoundError(f"only {len(data)} bytes of stdlib sources found under {root}; lm needs its corpus")
    return data, used


class TransformerLM(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embed = nn.Embedding(256, c.d_model)
        self.layers = nn.ModuleList(Block(c.d_model, c.n_heads, c.d_mlp) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.decoder = nn.Linear(c.d_model, 256)
        self.register_buffer("pos", sinusoidal_positions(c.context, c.d_model), persistent=False)
        causal = torch.triu(torch.ones(c.context, c.context, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, x):
        T = x.shape[1]
        h = self.embed(x) + self.pos[:T]
        for layer in self.layers:
            h = layer(h, attn_mask=self.causal[:T, :T])
        return self.decoder(self.norm(h))


class LMTask(BuiltinTask):
    name = "lm"
    Config = Config
    has_error = False
    eval_batch_size = 200
    eval_train_subset = 1000  # docs/method.md 2: the LM's train evaluation uses a fixed 1000-example subset

    def make_data(self):
        c = self.config
        text, self.corpus_files = read_corpus(c.corpus_bytes)
        self.corpus_sha256 = hashlib.sha256(text).hexdigest()
        data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
        n_val = int(len(data) * c.val_frac)
        out = {}
        for split, part in (("train", data[: len(data) - n_val]), ("val", data[len(data) - n_val :])):
            n = (len(part) - 1) // c.context
            x = part[: n * c.context].view(n, c.context)
            y = part[1 : n * c.context + 1].view(n, c.context)
            out[split] = (x, y)
        return out

    def data_info(self) -> dict:
        self.data("train")
        return {"corpus_files": self.corpus_files, "corpus_sha256": self.corpus_sha256,
                "python": platform.python_version()}  # fmt: skip

    def build_model(self) -> nn.Module:
        with seeded(self.config.seed):
            return TransformerLM(self.config)

    def batch_loss(self, model, batch):
        """Per-window mean next-byte cross-entropy (nats); all windows have the same length."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1), None
