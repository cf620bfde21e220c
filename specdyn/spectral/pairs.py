"""Neighbouring-layer alignment pairs (docs/method.md 1.6): which matrices pair up, and their alignment diagonal.

A pair (prev, next) compares the output space of `prev` with the input space of `next`:
A_ii = |<v_i^next, u_i^prev>|. Pairs are found automatically between consecutive matrices in depth order whose
shapes chain (prev's output dimension equals next's input dimension), with the conventions of docs/method.md:
- an embedding (vocab x d) outputs along its d side, so its V stands in for U; it is never a `next`;
- a conv `next` is read at its centre kernel tap (its v_j sliced there, not renormalized);
- a fused attention in-projection (3d x d) feeds the following d-input matrix through its value rows
  W_v = rows[-d:] ("vo", one extra SVD of that slice), and pairs with itself as query-key ("qk": per-head SVDs of
  W_q and W_k, A_h = |U_q,h^T U_k,h|, diagonal averaged over heads);
- separate q/k projections pair as "qk" too, and the spurious q -> k -> v chain is skipped;
- an LSTM weight (4H x in) feeds an H-input matrix through its cell-candidate gate g (rows [2H:3H]).
`--pairs FILE` lists pairs explicitly ("prev next" per line) for models the rules do not fit (UNet skips).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specdyn.errors import SpecdynError
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.metrics import alignment_diag
from specdyn.spectral.svd import Spectrum, head_left_vectors

PAIR_KINDS = ("plain", "embedding", "vo", "qk", "lstm_gate")

_Q = re.compile(r"(^|\.)(q_proj|query|wq|q)(\.weight)$")
_K = re.compile(r"(^|\.)(k_proj|key|wk|k)(\.weight)$")


@dataclass(frozen=True)
class PairSpec:
    prev: str
    next: str
    kind: str

    @property
    def name(self) -> str:
        return f"{self.prev} (qk)" if self.kind == "qk" and self.prev == self.next else f"{self.prev} -> {self.next}"

    def to_json(self) -> dict:
        return {"name": self.name, "prev": self.prev, "next": self.next, "kind": self.kind}


def _out_dim(spec: MatrixSpec) -> int:
    return spec.shape[1] if spec.kind == "embedding" else spec.shape[0]


def _chain(a: MatrixSpec, b: MatrixSpec) -> str | None:
    """The pair kind linking a -> b, or None when their shapes do not chain."""
    if b.kind == "embedding":
        return None
    if _out_dim(a) == b.in_channels:
        return "embedding" if a.kind == "embedding" else "plain"
    if a.kind == "attention_in_proj" and a.shape[1] == b.in_channels:
        return "vo"
    if a.kind == "lstm" and a.shape[0] == 4 * b.in_channels:
        return "lstm_gate"
    return None


def _qk_partner(specs: list[MatrixSpec], i: int) -> MatrixSpec | None:
    """For a separate query projection, the key projection of the same module."""
    m = _Q.search(specs[i].name)
    if not m:
        return None
    prefix = specs[i].name[: m.start(2)]
    for other in specs:
        km = _K.search(other.name)
        if km and other.name[: km.start(2)] == prefix and other.shape == specs[i].shape:
            return other
    return None


def find_pairs(specs: list[MatrixSpec], n_heads: int | None) -> list[PairSpec]:
    """Alignment pairs between consecutive matrices whose shapes chain, plus query-key pairs (when heads are known)."""
    pairs: list[PairSpec] = []
    qk_names = set()
    for i, spec in enumerate(specs):
        partner = _qk_partner(specs, i)
        if partner is not None:
            qk_names.update({spec.name, partner.name})
            if n_heads and spec.shape[0] % n_heads == 0:
                pairs.append(PairSpec(spec.name, partner.name, "qk"))
    for i, a in enumerate(specs):
        if a.kind == "attention_in_proj" and n_heads and a.shape[1] % n_heads == 0:
            pairs.append(PairSpec(a.name, a.name, "qk"))
        if i + 1 < len(specs):
            b = specs[i + 1]
            if a.name in qk_names:  # q -> k and k -> v chain by shape but mean nothing
                continue
            kind = _chain(a, b)
            if kind:
                pairs.append(PairSpec(a.name, b.name, kind))
    return pairs


def read_pairs_file(path: Path, specs: list[MatrixSpec], n_heads: int | None) -> list[PairSpec]:
    """Pairs listed one per line as `prev next` (or `prev -> next`); `#` starts a comment.
    A line naming one matrix twice is its query-key pair."""
    by_name = {s.name: s for s in specs}
    pairs = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SpecdynError(
            f"{path}: cannot read the pairs file ({e.strerror}); pass a text file of `prev next` lines"
        ) from None
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].replace("->", " ").strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SpecdynError(f"{path}:{lineno}: expected `prev next`, got {line!r}")
        missing = [p for p in parts if p not in by_name]
        if missing:
            raise SpecdynError(
                f"{path}:{lineno}: unknown matrix {missing[0]!r}; names are as `specdyn info` lists them"
            )
        a, b = by_name[parts[0]], by_name[parts[1]]
        if a.name == b.name or (_Q.search(a.name) and _K.search(b.name)):
            if not n_heads:
                raise SpecdynError(f"{path}:{lineno}: a query-key pair needs the number of heads; pass --heads")
            pairs.append(PairSpec(a.name, b.name, "qk"))
            continue
        kind = _chain(a, b)
        if kind is None:
            raise SpecdynError(
                f"{path}:{lineno}: {a.name} {list(a.shape)} does not feed {b.name} {list(b.original_shape)}: "
                "the previous layer's output dimension must equal the next layer's input dimension"
            )
        pairs.append(PairSpec(a.name, b.name, kind))
    return pairs


def slice_needs(pairs: list[PairSpec], specs: list[MatrixSpec]) -> dict[str, set[str]]:
    """Which extra slice SVDs each matrix needs for its pairs: {"vo"} value rows, {"qk"} per-head q/k."""
    needs: dict[str, set[str]] = {}
    for p in pairs:
        if p.kind == "vo":
            needs.setdefault(p.prev, set()).add("vo")
        elif p.kind == "qk":
            needs.setdefault(p.prev, set()).add("q" if p.prev != p.next else "qk")
            if p.prev != p.next:
                needs.setdefault(p.next, set()).add("k")
    return needs


def slice_vectors(W: np.ndarray, needs: set[str], n_heads: int | None, engine) -> dict:
    """The slice SVDs of one matrix that its pairs need (computed while W is in memory)."""
    out = {}
    if "vo" in needs:
        d = W.shape[1]
        out["vo"] = engine(W[-d:])
    if "qk" in needs:
        d = W.shape[1]
        out["q"] = head_left_vectors(W[:d].reshape(n_heads, d // n_heads, d))
        out["k"] = head_left_vectors(W[d : 2 * d].reshape(n_heads, d // n_heads, d))
    if "q" in needs:
        out["q"] = head_left_vectors(W.reshape(n_heads, W.shape[0] // n_heads, W.shape[1]))
    if "k" in needs:
        out["k"] = head_left_vectors(W.reshape(n_heads, W.shape[0] // n_heads, W.shape[1]))
    return out


def _centre_tap(spec: MatrixSpec, V: np.ndarray) -> np.ndarray:
    """Rows of V (an input-space basis of a (transposed) conv) at the centre kernel tap: (c_in, r)."""
    if spec.kind not in ("conv", "tconv"):
        return V
    kernel = spec.original_shape[2:]
    c_in = spec.in_channels
    V = V.reshape(c_in, *kernel, V.shape[-1])
    centre = tuple(k // 2 for k in kernel)
    return V[(slice(None), *centre)]


def pair_diag(pair: PairSpec, specs: dict[str, MatrixSpec], spectra: dict[str, Spectrum], slices: dict) -> np.ndarray:
    """The alignment diagonal of one pair at one checkpoint (length <= top)."""
    a, b = specs[pair.prev], specs[pair.next]
    if pair.kind == "qk":
        src_q = slices[pair.prev]["q"]
        src_k = slices[pair.next]["k"]
        per_head = np.abs((src_q * src_k).sum(axis=-2))  # (H, d_h): |<u_q,h,i, u_k,h,i>|
        return per_head.mean(axis=0)
    if pair.kind == "embedding":
        U_prev = spectra[a.name].V
    elif pair.kind == "vo":
        U_prev = slices[a.name]["vo"].U
    elif pair.kind == "lstm_gate":
        H = a.shape[0] // 4
        U_prev = spectra[a.name].U[2 * H : 3 * H]
    else:
        U_prev = spectra[a.name].U
    V_next = _centre_tap(b, spectra[b.name].V)
    return alignment_diag(U_prev, V_next)
