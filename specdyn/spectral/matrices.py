"""Which tensors of a checkpoint are weight matrices, what kind each is, and how to flatten it to m x n.

Every tensor with ndim >= 2 is a matrix (docs/method.md 0): conv kernels (c_out, c_in, *k) flatten to
c_out x (c_in * prod(k)); transposed convs (stored (c_in, c_out, *k), recognised by name) are transposed on
dims 0 and 1 first; bf16/fp16 are upcast to float32. The kind only matters for alignment pairs.
"""

import fnmatch
import re
from dataclasses import dataclass

import numpy as np

from specdyn.errors import SpecdynError

KINDS = ("linear", "conv", "tconv", "embedding", "attention_in_proj", "lstm")

_TCONV = re.compile(r"(tconv|conv_?transpose|deconv|upconv)", re.IGNORECASE)
_EMBED = re.compile(r"(embed|(^|\.)(wte|wpe|tok_emb|pos_emb|word_embeddings|position_embeddings)(\.|$))", re.IGNORECASE)
_FUSED_ATTN = re.compile(r"(in_proj_weight|(^|\.)(c_attn|qkv|query_key_value|wqkv|Wqkv)(\.|$))")
_LSTM = re.compile(r"weight_(ih|hh)_l\d+")


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix: its tensor name, original shape, kind and flattened (m, n) shape."""

    name: str
    original_shape: tuple[int, ...]
    kind: str

    @property
    def shape(self) -> tuple[int, int]:
        s = self.original_shape
        if self.kind == "tconv":
            s = (s[1], s[0], *s[2:])
        return s[0], int(np.prod(s[1:]))

    @property
    def k(self) -> int:
        return min(self.shape)

    @property
    def in_channels(self) -> int:
        """Size of the input space: columns for a plain matrix, input channels for a (transposed) conv."""
        if self.kind == "conv":
            return self.original_shape[1]
        if self.kind == "tconv":
            return self.original_shape[0]
        return self.shape[1]

    def flatten(self, t) -> np.ndarray:
        """The float32 m x n matrix of a torch tensor with this spec's shape."""
        import torch  # not at module level: reading a store must not pay torch's import time

        t = t.detach()
        if t.dtype != torch.float32:
            t = t.to(torch.float32)
        if self.kind == "tconv":
            t = t.transpose(0, 1)
        return np.ascontiguousarray(t.reshape(self.shape).numpy())

    def to_json(self) -> dict:
        return {"name": self.name, "original_shape": list(self.original_shape), "kind": self.kind}


def classify(name: str, shape: tuple[int, ...]) -> str:
    """The kind of a weight tensor, from its name and shape (checkpoints keep no module types)."""
    if len(shape) >= 3:
        return "tconv" if _TCONV.search(name) else "conv"
    if _LSTM.search(name):
        return "lstm"
    if _FUSED_ATTN.search(name) and shape[0] == 3 * shape[1]:
        return "attention_in_proj"
    if _EMBED.search(name):
        return "embedding"
    return "linear"


def select_matrices(
    shapes: dict[str, tuple[int, ...]],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    where: str = "checkpoint",
) -> list[MatrixSpec]:
    """MatrixSpecs for every ndim >= 2 tensor, in the given (depth) order, filtered by glob patterns."""
    specs = []
    for name, shape in shapes.items():
        if len(shape) < 2 or 0 in shape:
            continue
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        specs.append(MatrixSpec(name, tuple(int(d) for d in shape), classify(name, shape)))
    if not specs:
        raise SpecdynError(
            f"{where}: no weight matrices (tensors with ndim >= 2) left after --include/--exclude; "
            "check the patterns against `specdyn info` or the checkpoint's tensor names"
        )
    return specs
