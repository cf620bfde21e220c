"""`lstm`: a bidirectional LSTM labelling every frame of synthetic sequences (docs/method.md 4, the speech rows).

A sticky Markov chain over `n_states` hidden states emits noisy feature frames (a state's mean plus noise);
the task is to recover each frame's state, which context on both sides makes far easier than one frame alone,
as in frame-level speech recognition. Names match the paper's BiLSTM (`lstm.weight_ih_l0`, `..._reverse`,
final layer `linear`), so the analyzer's LSTM conventions (4H gate blocks, 2H bidirectional inputs) apply.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from specdyn.tasks.base import BuiltinTask, TrainConfig, seeded


@dataclasses.dataclass
class Config(TrainConfig):
    n_states: int = 8
    feature_dim: int = 16
    seq_len: int = 40
    stay_prob: float = 0.9
    noise_std: float = 3.0  # one frame alone is ambiguous; its neighbours disambiguate it
    hidden: int = 64
    n_layers: int = 2
    bidirectional: bool = True
    n_train: int = 2000
    n_val: int = 400
    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0


class SeqTagger(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.lstm = nn.LSTM(c.feature_dim, c.hidden, c.n_layers, batch_first=True, bidirectional=c.bidirectional)
        self.linear = nn.Linear(c.hidden * (2 if c.bidirectional else 1), c.n_states)

    def forward(self, x):
        return self.linear(self.lstm(x)[0])  # (B, T, n_states)


class LSTMTask(BuiltinTask):
    name = "lstm"
    Config = Config
    has_error = True
    eval_batch_size = 200

    def make_data(self):
        c = self.config
        g = torch.Generator().manual_seed(c.data_seed)
        means = torch.randn(c.n_states, c.feature_dim, generator=g)
        n = c.n_train + c.n_val
        states = torch.empty(n, c.seq_len, dtype=torch.long)
        states[:, 0] = torch.randint(c.n_states, (n,), generator=g)
        for t in range(1, c.seq_len):
            stay = torch.rand(n, generator=g) < c.stay_prob
            jump = torch.randint(c.n_states, (n,), generator=g)
            states[:, t] = torch.where(stay, states[:, t - 1], jump)
        x = means[states] + c.noise_std * torch.randn(n, c.seq_len, c.feature_dim, generator=g)
        return {"train": (x[: c.n_train], states[: c.n_train]), "val": (x[c.n_train :], states[c.n_train :])}

    def build_model(self) -> nn.Module:
        with seeded(self.config.seed):
            return SeqTagger(self.config)

    def batch_loss(self, model, batch):
        """Per-sequence mean frame loss and frame error rate (every sequence has the same length)."""
        x, y = batch
        logits = model(x)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
        return losses, (logits.argmax(-1) != y).float().mean(1)
