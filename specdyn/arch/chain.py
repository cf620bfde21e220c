"""Neighbour pairs in forward order from a family's roles (docs/architectures.md): the paper's chain translated
to a transformer block, sequential or parallel, encoder or decoder.

Per block: every matrix writing the block's input -> every reader of it (q, k, v or the fused projection; in a
parallel block also the MLP's inputs); query-key per head; value -> output projection; attention output -> the
MLP's inputs (sequential blocks); each MLP input -> the MLP output (both halves of a fused gate/up projection,
read through their rows); in a mixture of experts, the router reads the MLP's input and each expert pairs only
within itself (gate, up -> down). The block's output writers (the MLP output, a dense or shared expert's; in a
parallel block also the attention output; in a block of routed experts only, the attention output) feed the next
block, and the last block feeds the head chain.
Cross-attention reads the decoder stream in q and the encoder's output in k and v.
"""

from __future__ import annotations

import re

from specdyn.arch.base import Family
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.pairs import PairSpec, chain_kind, qk_pair


class Names:
    """The model's parameter names (without `.weight`) -> specs, tied aliases resolved to their canonical spec."""

    def __init__(self, by_model: dict[str, MatrixSpec], aliases: dict[str, str], shown: dict[str, str]):
        self.by_model = {n.removesuffix(".weight"): s for n, s in by_model.items()}
        self.aliases = {a.removesuffix(".weight"): c.removesuffix(".weight") for a, c in aliases.items()}
        self.shown = shown  # alias model name -> the name pairs show for it

    def get(self, name: str) -> tuple[MatrixSpec | None, str | None]:
        if name in self.by_model:
            return self.by_model[name], None
        if name in self.aliases and self.aliases[name] in self.by_model:
            return self.by_model[self.aliases[name]], self.shown.get(name + ".weight", name + ".weight")
        return None, None

    def find(self, pattern: str) -> tuple[MatrixSpec | None, str | None]:
        rx = re.compile(rf"(^|\.)({pattern})$")
        for name in list(self.by_model) + list(self.aliases):
            if rx.search(name):
                return self.get(name)
        return None, None


def blocks_of(names: Names, pattern: str) -> list[tuple[str, dict[str, MatrixSpec]]]:
    """[(block prefix, {relative name: spec})] in registration order."""
    rx = re.compile(rf"(^|\.)({pattern})")
    out: dict[str, dict[str, MatrixSpec]] = {}
    for name, spec in names.by_model.items():
        m = rx.search(name)
        if m:
            out.setdefault(name[: m.end()], {})[name[m.end() :]] = spec
    return list(out.items())


def _get(rel: dict[str, MatrixSpec], names: str) -> MatrixSpec | None:
    """The spec of a role, written as alternatives `a|b` (module names of different transformers versions)."""
    return next((rel[n] for n in names.split("|") if n and n in rel), None)


def _experts(rel: dict[str, MatrixSpec], module: str) -> list[dict[str, MatrixSpec]]:
    """The experts of a block's experts module, in expert order: {"gate"|"up"|"down": spec} each."""
    if not module:
        return []
    rx = re.compile(rf"^{re.escape(module)}\.(\d+)\.(gate|up|down)$")
    out: dict[int, dict[str, MatrixSpec]] = {}
    for name, spec in rel.items():
        if m := rx.match(name):
            out.setdefault(int(m[1]), {})[m[2]] = spec
    return [out[e] for e in sorted(out)]


def family_pairs(family: Family, config: dict, names: Names, heads: int | None) -> tuple[list[PairSpec], list[str]]:
    """The family's pairs, and the links it states whose shapes do not chain (reported, not paired)."""
    pairs: dict[str, PairSpec] = {}
    broken: list[str] = []
    parallel = family.parallel(config)

    def link(writers, readers, tied_as=None, value=False):
        for w in writers:
            for r in readers:
                if w is None or r is None:
                    continue
                p = chain_kind(w, r, heads=heads, tied=tied_as is not None, value=value)
                if p is None:
                    broken.append(f"{w.name} -> {tied_as or r.name}")
                    continue
                p = PairSpec(p.prev, p.next, p.kind, p.heads, p.kv_heads, p.cols, tied_as)
                pairs.setdefault(p.name, p)

    def add(p):
        if p is not None:
            pairs.setdefault(p.name, p)

    writers: list[MatrixSpec] = []
    encoder_out: list[MatrixSpec] = []
    for si, stack in enumerate(family.stacks):
        embeds = [e for e in (names.find(p)[0] for p in stack.embed) if e is not None]
        if embeds:  # the input embedding, then any projection chained after it (OPT's project_in)
            writers = embeds[:1]
            for e in embeds[1:]:
                link(writers, [e])
                writers = [e]
        for _, rel in blocks_of(names, stack.blocks):
            block_in, out = writers, []
            for att in stack.attention:
                q, k, v, qkv, o = (_get(rel, n) for n in (att.q, att.k, att.v, att.qkv, att.o))
                src = block_in if parallel else writers
                if qkv is not None:
                    link(src, [qkv])
                    add(qk_pair(qkv, qkv, heads))
                    link([qkv], [o])
                else:
                    link(src, [q])
                    link(encoder_out if att.cross else src, [k, v])
                    if q is not None and k is not None:
                        add(qk_pair(q, k, heads))
                    link([v], [o], value=True)
                if o is not None:
                    out.append(o)
                    if not parallel:
                        writers = [o]
            ins = [_get(rel, n) for n in stack.mlp_in]
            fused_mlp = _get(rel, stack.mlp_fused) if stack.mlp_fused else None
            routers = [_get(rel, n) for n in stack.router]
            link(block_in if parallel else writers, [*ins, fused_mlp, *routers])
            for expert in _experts(rel, stack.experts):  # within an expert only: gate, up -> down
                link([expert.get("gate"), expert.get("up")], [expert.get("down")])
            mlp_out = _get(rel, stack.mlp_out)
            link(ins, [mlp_out])
            if fused_mlp is not None and mlp_out is not None:  # each half of [gate; up] feeds the output
                half = fused_mlp.shape[0] // 2
                for rows in ((0, half), (half, 2 * half)):
                    p = chain_kind(fused_mlp, mlp_out, rows=rows)
                    if p is None:
                        broken.append(f"{fused_mlp.name}[{rows[0]}:{rows[1]}] -> {mlp_out.name}")
                    add(p)
            if mlp_out is not None:
                writers = [*out, mlp_out] if parallel else [mlp_out]
        if si == 0:
            encoder_out = writers
    for chain in family.heads_chains:
        current = writers
        for pattern in chain:
            spec, tied_as = names.find(pattern)
            if spec is None:
                continue
            link(current, [spec], tied_as)
            current = [spec]
    return list(pairs.values()), broken
