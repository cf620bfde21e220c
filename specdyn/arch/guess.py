"""What is read from names and shapes when no model definition describes a checkpoint (docs/architectures.md,
steps 2 and 3): kinds by name, the two GPT-style fused layouts that shapes alone decide, and a one-line account
of every guess, which `analyze` prints once per store."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

from specdyn.spectral.matrices import MatrixSpec

# a GPT-style block's four matrices (GPT-2 and GPT-BigCode in transformers, nanoGPT): the block prefix and role
_GPT_BLOCK = re.compile(
    r"^(?P<block>(.*\.)?h\.\d+)\.(?P<role>attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
)


def refine_guess(specs: list[MatrixSpec], heads: int | None) -> tuple[list[MatrixSpec], list[str]]:
    """Specs guessed from names and shapes (structure._guessed_specs), with the GPT layouts shapes decide, and
    notes naming what shapes decided and what is a guess (for the warning)."""
    notes: list[str] = []
    specs, decided = _gpt_blocks(specs, heads, notes)
    fused = [s for s in specs if s.kind == "attention_in_proj" and not s.fused and s.name not in decided]
    if fused:
        split = f"{heads} heads each" if heads else "thirds, no head count so no query-key pairs"
        notes.append(
            f"{len(fused)} fused projections (e.g. {fused[0].name!r}) split as [q; k; v] blocks ({split}): right "
            "for GPT-2, nanoGPT and nn.MultiheadAttention, wrong for the per-head layouts of GPT-NeoX, BLOOM, Falcon "
            "and GPT-BigCode"
        )
    stacks = sorted({s.cut.tensor for s in specs if s.cut is not None})
    if stacks:
        notes.append(
            f"{len(stacks)} stacks of experts (e.g. {stacks[0]!r}) split per expert as transformers 5 lays them out"
        )
    convs = [s for s in specs if s.kind in ("conv", "tconv") and len(s.original_shape) >= 3]
    if convs:
        notes.append(
            f"{len(convs)} tensors of 3 or more dimensions (e.g. {convs[0].name!r} {list(convs[0].original_shape)}) "
            "read as convolution kernels"
        )
    return specs, notes


def _gpt_blocks(specs: list[MatrixSpec], heads: int | None, notes: list[str]) -> tuple[list[MatrixSpec], set[str]]:
    """GPT-style blocks whose c_attn shape states its layout: d x 3d is GPT-2's Conv1D (stored in x out, so the
    block's four matrices are transposed; q, k, v blocks), (d + 2 d_h) x d is GPT-BigCode's multi-query Linear
    ([q; k; v] blocks with one key/value head). A 3d x d Linear is nanoGPT's blocks or GPT-BigCode's per-head
    layout, which shapes cannot tell apart: left to the generic fused guess."""
    blocks: dict[str, dict[str, int]] = {}
    for i, s in enumerate(specs):
        m = _GPT_BLOCK.match(s.name)
        if m and len(s.original_shape) == 2 and s.cut is None:
            blocks.setdefault(m["block"], {})[m["role"]] = i
    conv1d, mqa = [], []
    out = list(specs)
    for roles in blocks.values():
        if "attn.c_attn" not in roles:
            continue
        attn = specs[roles["attn.c_attn"]]
        r, c = attn.original_shape
        if c == 3 * r and _stored_in_by_out(specs, roles):
            for role, i in roles.items():
                fused = ("blocks", heads, heads) if role == "attn.c_attn" and heads else None
                kind = "attention_in_proj" if role == "attn.c_attn" else "linear"
                out[i] = replace(specs[i], kind=kind, transposed=True, fused=fused)
            conv1d.append(attn.name)
        elif r != 3 * c and r > c and (r - c) % 2 == 0 and c % ((r - c) // 2) == 0:
            d_h = (r - c) // 2
            out[roles["attn.c_attn"]] = replace(attn, kind="attention_in_proj", fused=("blocks", c // d_h, 1))
            mqa.append((attn.name, c // d_h, d_h))
    if conv1d:
        split = f"{heads} heads each" if heads else "thirds, no head count so no query-key pairs"
        notes.append(
            f"{len(conv1d)} GPT-2 blocks recognised by c_attn's d x 3d shape (e.g. {conv1d[0]!r}): their Conv1D "
            f"weights (stored in x out) are transposed, c_attn split as [q; k; v] blocks ({split})"
        )
    if mqa:
        name, H, d_h = mqa[0]
        notes.append(
            f"{len(mqa)} multi-query c_attn (e.g. {name!r}: {H} query heads of {d_h}, one key/value head) split as "
            "GPT-BigCode's [q; k; v] blocks, from their shapes"
        )
    return out, set(conv1d) | {name for name, _, _ in mqa}


def _stored_in_by_out(specs: list[MatrixSpec], roles: dict[str, int]) -> bool:
    """The block's MLP input is stored d x 4d-like (wider than tall), as Conv1D stores it."""
    fc = roles.get("mlp.c_fc")
    return fc is None or specs[fc].original_shape[1] > specs[fc].original_shape[0]


def guess_warning(specs: list[MatrixSpec], notes: list[str], ordered: bool, why: str) -> str:
    """The one line `analyze` prints when the structure is not the model's own: what was guessed."""
    order = (
        "depth order is the checkpoint's registration order"
        if ordered
        else "depth order is guessed (a natural sort of the names)"
    )
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(s.kind for s in specs).items()))
    return (
        f"{why}: {order}; kinds are guessed from names and shapes ({kinds}) and pairs from consecutive shapes"
        + "".join(f"; {n}" for n in notes)
    )
