"""Which tensors of a checkpoint are weight matrices, what kind each is, and how to flatten it to m x n.

Every tensor with ndim >= 2 is a matrix (docs/method.md 0), with rows as outputs and columns as inputs:
conv kernels (c_out, c_in, *k) flatten to c_out x (c_in * prod(k)); transposed convs (stored (c_in, c_out, *k))
are transposed on dims 0 and 1 first; a weight stored input-major (Hugging Face `Conv1D`, in x out) is transposed;
token tensors with leading singleton dims ((1, T, d) position embeddings, ViT's cls_token) become T x d.
bf16/fp16 are upcast to float32. The kind matters for alignment pairs; the architecture layer (specdyn.arch)
sets kinds, orientation and fused-projection layouts from the model's definition where it can.
"""

import fnmatch
import re
from dataclasses import dataclass

import numpy as np

from specdyn.errors import SpecdynError

KINDS = ("linear", "conv", "tconv", "embedding", "attention_in_proj", "lstm", "head", "router")
ROWS_ARE_OUTPUTS = "rows=outputs"
TRANSPOSED = "transposed from Conv1D (in x out)"
# docs/architectures.md: how a fused projection's rows interleave q, k, v (or gate and up); "unsplit": fused,
# but no family states how, so it is analyzed whole and gets no head pairs
FUSED_LAYOUTS = ("blocks", "per_head", "grouped", "codegen", "gate_up", "unsplit")
UNSPLIT = "unsplit"
GATE_UP = ("gate_up", 0, 0)  # [gate; up] halves, each read by the MLP's output projection (no heads)

_TCONV = re.compile(r"(tconv|conv_?transpose|deconv|upconv)", re.IGNORECASE)
_EMBED = re.compile(r"(embed|(^|\.)(wte|wpe|tok_emb|pos_emb|word_embeddings|position_embeddings)(\.|$))", re.IGNORECASE)
_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)(\.weight)?$")
_TOKENS = re.compile(r"(cls_token|dist_token|mask_token|pos_embed|position_embedding|register_tokens)", re.IGNORECASE)
_FUSED_ATTN = re.compile(r"(in_proj_weight|(^|\.)(c_attn|qkv|query_key_value|wqkv|Wqkv)(\.|$))")
_LSTM = re.compile(r"weight_(ih|hh)_l\d+")
_FUSED_ANY = re.compile(
    r"(^|\.)(c_attn|qkv|qkv_proj|query_key_value|wqkv|Wqkv|W_pack|att_proj|gate_up_proj|w12|Wi)(\.weight)?$"
)


@dataclass(frozen=True)
class Cut:
    """Where a matrix lies inside a larger tensor (one expert of a mixture-of-experts stack): `tensor`'s leading
    axis viewed as `experts` blocks, block `expert`, and of its output axis part `part` of `parts` (contiguous
    halves [gate; up], or every `parts`-th row when `interleaved`)."""

    tensor: str
    expert: int
    experts: int
    part: int = 0
    parts: int = 1
    interleaved: bool = False

    def to_json(self) -> list:
        return [self.tensor, self.expert, self.experts, self.part, self.parts, self.interleaved]

    @classmethod
    def from_json(cls, doc: list) -> "Cut":
        return cls(str(doc[0]), *(int(x) for x in doc[1:5]), bool(doc[5]))


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix: its name, original shape, kind, orientation and (for a fused q/k/v projection) its row
    layout `fused = (layout, heads, kv_heads)`, flattened to (m, n) with rows as outputs. An expert's matrix
    records its expert index, and `cut` when it is read from a stack of experts (else the tensor `name`)."""

    name: str
    original_shape: tuple[int, ...]
    kind: str
    transposed: bool = False  # stored in x out (HF Conv1D): rows become outputs by a transpose
    fused: tuple[str, int, int] | None = None
    expert: int | None = None
    cut: Cut | None = None

    @property
    def tensor(self) -> str:
        """The checkpoint tensor this matrix is read from."""
        return self.cut.tensor if self.cut else self.name

    @property
    def block(self) -> tuple[int, int] | None:
        """(index, count): the block of the tensor's leading axis to read, for a matrix cut from a stack."""
        return (self.cut.expert, self.cut.experts) if self.cut else None

    def take(self, block):
        """This matrix (as stored, before any transpose) out of its tensor's block: a stack's expert is the block,
        and a fused [gate; up] of it one part of its output axis."""
        if self.cut is None:
            return block
        c = self.cut
        out = block.reshape(block.shape[-2:]) if block.ndim > 2 else block
        axis = 1 if self.transposed else 0
        n = out.shape[axis] // c.parts
        index = slice(c.part, None, c.parts) if c.interleaved else slice(c.part * n, (c.part + 1) * n)
        return out[(slice(None), index) if axis else index]

    @property
    def shape(self) -> tuple[int, int]:
        s = self.original_shape
        if self.kind == "tconv":
            s = (s[1], s[0], *s[2:])
        elif self.kind not in ("conv",) and len(s) > 2:
            s = tokens_shape(s)
        if self.transposed:
            return s[1], s[0]
        return s[0], int(np.prod(s[1:]))

    @property
    def k(self) -> int:
        return min(self.shape)

    @property
    def orientation(self) -> str:
        return TRANSPOSED if self.transposed else ROWS_ARE_OUTPUTS

    @property
    def in_channels(self) -> int:
        """Size of the input space: columns for a plain matrix, input channels for a (transposed) conv."""
        if self.kind == "conv":
            return self.original_shape[1]
        if self.kind == "tconv":
            return self.original_shape[0]
        return self.shape[1]

    @property
    def kernel_size(self) -> int:
        """Columns per input channel: prod(kernel) for a (transposed) conv, else 1."""
        return int(np.prod(self.original_shape[2:])) if self.kind in ("conv", "tconv") else 1

    def flatten(self, t, contiguous: bool = True) -> np.ndarray:
        """The float32 m x n matrix of a numpy array or torch tensor with this spec's shape. With
        `contiguous=False` a transposed layout (Conv1D) stays a column-major view: the SVD engine takes it as
        it is, and the copy (9 ms for a 3072 x 768 matrix) is saved."""
        if not isinstance(t, np.ndarray):  # torch, imported by whoever made the tensor
            t = t.detach().float().numpy()
        t = t.astype(np.float32, copy=False)
        if self.kind == "tconv":
            t = np.swapaxes(t, 0, 1)
        if self.transposed:
            W = t.reshape(self.shape[::-1]).T
            return np.ascontiguousarray(W) if contiguous else W
        return np.ascontiguousarray(t.reshape(self.shape))

    def to_json(self) -> dict:
        return {"name": self.name, "original_shape": list(self.original_shape), "kind": self.kind}


def tokens_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(1, ..., 1, T, d) -> (T, d). Any other tensor of 3 or more dims that is not a convolution has no rule."""
    s = tuple(shape)
    while len(s) > 2 and s[0] == 1:
        s = s[1:]
    if len(s) != 2:
        raise SpecdynError(f"a {list(shape)} tensor that is not a convolution has no matrix rule")
    return s


def is_token_tensor(name: str, shape: tuple[int, ...]) -> bool:
    """A (1, ..., T, d) parameter that is a sequence of vectors (not a conv kernel), judged by its name."""
    return len(shape) > 2 and all(d == 1 for d in shape[:-2]) and bool(_TOKENS.search(name))


def classify(name: str, shape: tuple[int, ...]) -> str:
    """The kind of a weight tensor guessed from its name and shape (used when the model's definition is unknown)."""
    if is_token_tensor(name, shape):
        return "embedding"
    if len(shape) >= 3:
        return "tconv" if _TCONV.search(name) else "conv"
    if _LSTM.search(name):
        return "lstm"
    if _FUSED_ATTN.search(name) and shape[0] == 3 * shape[1]:
        return "attention_in_proj"
    if _HEAD.search(name):
        return "head"
    if _EMBED.search(name):
        return "embedding"
    return "linear"


def looks_fused(name: str) -> bool:
    """A parameter whose name says it fuses q/k/v or gate/up (c_attn, qkv_proj, Wqkv, gate_up_proj, ...)."""
    return bool(_FUSED_ANY.search(name) or _FUSED_ATTN.search(name))


def matches(name: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def select_matrices(
    shapes: dict[str, tuple[int, ...]],
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    where: str = "checkpoint",
    specs: list[MatrixSpec] | None = None,
) -> list[MatrixSpec]:
    """MatrixSpecs for every ndim >= 2 tensor, in the given (depth) order, filtered by glob patterns. `specs`,
    when given (from the architecture layer), replaces the guess from names and shapes."""
    if specs is None:
        specs = [
            MatrixSpec(name, tuple(int(d) for d in shape), classify(name, shape))
            for name, shape in shapes.items()
            if len(shape) >= 2 and 0 not in shape
        ]
    specs = [s for s in specs if matches(s.name, include, exclude)]
    if not specs:
        raise SpecdynError(
            f"{where}: no weight matrices (tensors with ndim >= 2) left after --include/--exclude; "
            "check the patterns against `specdyn info` or the checkpoint's tensor names"
        )
    return specs
