"""The pre-LN transformer block shared by the `modadd` and `lm` tasks.

Parameter names follow `nn.TransformerEncoderLayer` (`self_attn.in_proj_weight`, `self_attn.out_proj`,
`linear1`, `linear2`, `norm1`, `norm2`) as in the paper's models, so the analyzer's transformer conventions
(fused 3d x d in-projection split into Q, K, V; `n_heads` from the config) apply unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed sine/cosine position table of Vaswani et al. (n_positions, d_model)."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


class Block(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + linear2(relu(linear1(norm2(x)))). Dropout 0, as in the paper."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, layernorm: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model) if layernorm else nn.Identity()
        self.linear1 = nn.Linear(d_model, d_mlp)
        self.linear2 = nn.Linear(d_mlp, d_model)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]
        return self.mlp(x)
