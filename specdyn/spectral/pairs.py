"""Neighbouring-layer alignment pairs (docs/method.md 1.6): which matrices pair up, and their alignment diagonal.

A pair (prev, next) compares the output space of `prev` with the input space of `next`:
A_ii = |<v_i^next, u_i^prev>|. The architecture layer (specdyn.arch) states the pairs of the model families it
knows, in forward order; `find_pairs` is the fallback that chains consecutive matrices in depth order whose shapes
chain (prev's output dimension equals next's input dimension), with the conventions of docs/method.md:
- an embedding (vocab x d) outputs along its d side, so its V stands in for U; it is never a `next` (except as
  a tied LM head, `tied_as`: logits = h E^T read h through E's d side);
- a conv `next` is read at its centre kernel tap (its v_j sliced there, not renormalized);
- a fused q/k/v projection feeds the output projection through its value rows ("vo", one extra SVD of those
  rows, repeated per query head under grouped-query attention), and pairs with itself as query-key ("qk":
  per-head SVDs of W_q and W_k, query head h against key head h // (H / H_kv), averaged over query heads);
- separate q/k projections pair as "qk" too, and the spurious q -> k -> v chain is skipped;
- an LSTM weight (4H x in) feeds an H-input matrix through its cell-candidate gate g (rows [2H:3H]); the paper's
  LSTM pairs (ih_l -> hh_l, ih_l -> ih_{l+1}, hh_l -> ih_{l+1}, last layer -> the next matrix) read a
  bidirectional next through its own direction's half of the 2H input (`cols`, one extra SVD of that slice).
`--alignment-pairs FILE` lists pairs explicitly, in the names `specdyn info` shows (`read_pairs_file`).
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
CODEGEN_MP = 4  # CodeGenAttention.mp_num, a constant in transformers' code (not a config value)

_Q = re.compile(r"(^|\.)(q_proj|query|wq|q)(\.weight)$")
_K = re.compile(r"(^|\.)(k_proj|key|wk|k)(\.weight)$")
_V = re.compile(r"(^|\.)(v_proj|value|wv|v)(\.weight)$")
_LSTM_NAME = re.compile(r"^(?P<p>.*?)weight_(?P<t>ih|hh)_l(?P<l>\d+)(?P<r>_reverse)?$")


@dataclass(frozen=True)
class PairSpec:
    """prev's output space against next's input space. `heads`/`kv_heads`: query and key/value heads of a
    "qk" or "vo" pair; `cols`: next read through its input channels [a, b) only; `tied_as`: the alias under
    which `next` (an embedding) acts as the LM head."""

    prev: str
    next: str
    kind: str
    heads: int | None = None
    kv_heads: int | None = None
    cols: tuple[int, int] | None = None
    tied_as: str | None = None
    rows: tuple[int, int] | None = None  # prev read through its output rows [a, b) (a fused gate/up projection)

    @property
    def name(self) -> str:
        if self.kind == "qk" and self.prev == self.next:
            return f"{self.prev} (qk)"
        cols = f"[:, {self.cols[0]}:{self.cols[1]}]" if self.cols else ""
        rows = f"[{self.rows[0]}:{self.rows[1]}]" if self.rows else ""
        return f"{self.prev}{rows} -> {self.tied_as or self.next}{cols}"

    def to_json(self) -> dict:
        out = {"name": self.name, "prev": self.prev, "next": self.next, "kind": self.kind}
        for key in ("heads", "kv_heads", "cols", "tied_as", "rows"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if key in ("cols", "rows") else value
        return out

    @classmethod
    def from_json(cls, doc: dict) -> "PairSpec":
        cols, rows = doc.get("cols"), doc.get("rows")
        return cls(
            doc["prev"], doc["next"], doc["kind"], doc.get("heads"), doc.get("kv_heads"),
            tuple(cols) if cols else None, doc.get("tied_as"), tuple(rows) if rows else None,
        )  # fmt: skip


# --- fused q/k/v row layouts (docs/architectures.md) ----------------------------------------------------------


def layout_of(spec: MatrixSpec, n_heads: int | None) -> tuple[str, int | None, int | None]:
    """(layout, H, H_kv) of a fused projection; an unknown one (classified by name) is [q; k; v] blocks."""
    if spec.fused:
        return spec.fused
    return "blocks", n_heads, n_heads


def role_rows(spec: MatrixSpec, role: str, n_heads: int | None = None) -> np.ndarray:
    """Row indices of `role` ("q", "k" or "v") in a fused projection, ordered (head, head_dim)."""
    m = spec.shape[0]
    layout, H, Hkv = layout_of(spec, n_heads)
    if spec.kind != "attention_in_proj":
        return np.arange(m)
    if layout == "blocks":
        if not H:  # heads unknown: thirds
            third = m // 3
            return np.arange(third) + {"q": 0, "k": third, "v": 2 * third}[role]
        dh = m // (H + 2 * Hkv)
        start = {"q": 0, "k": H * dh, "v": (H + Hkv) * dh}[role]
        return np.arange((H if role == "q" else Hkv) * dh) + start
    if layout == "per_head":  # rows viewed as (H, 3, head_dim): q, k, v of each head side by side
        dh = m // (3 * H)
        slot = {"q": 0, "k": 1, "v": 2}[role]
        return (np.arange(H)[:, None] * 3 * dh + slot * dh + np.arange(dh)[None]).ravel()
    if layout == "grouped":  # rows viewed as (H_kv, H/H_kv + 2, head_dim): a group's queries, then its k, v
        g = H // Hkv
        dh = m // (Hkv * (g + 2))
        slots = {"q": np.arange(g), "k": np.array([g]), "v": np.array([g + 1])}[role]
        base = np.arange(Hkv)[:, None] * (g + 2) + slots[None]  # (H_kv, len(slots)) head slots
        return (base.ravel()[:, None] * dh + np.arange(dh)[None]).ravel()
    if layout == "codegen":  # rows viewed as (mp_num = 4, 3, D/4): each group's q, then v, then k
        local = m // (3 * CODEGEN_MP)
        slot = {"q": 0, "v": 1, "k": 2}[role]
        return (np.arange(CODEGEN_MP)[:, None] * 3 * local + slot * local + np.arange(local)[None]).ravel()
    raise SpecdynError(f"{spec.name}: unknown fused layout {layout!r}")


def layout_fits(spec: MatrixSpec, n_heads: int | None) -> bool:
    """Whether a fused projection's rows split into its layout's heads (else it has no head pairs)."""
    layout, H, Hkv = layout_of(spec, n_heads)
    m = spec.shape[0]
    if not H:
        return m % 3 == 0
    if not Hkv or H % Hkv:
        return False
    if layout == "codegen":
        return H == Hkv and m % (3 * CODEGEN_MP) == 0 and (m // 3) % H == 0
    parts = {"blocks": H + 2 * Hkv, "per_head": 3 * H, "grouped": Hkv * (H // Hkv + 2)}.get(layout)
    return bool(parts) and m % parts == 0 and (layout != "per_head" or H == Hkv)


def value_dim(spec: MatrixSpec, n_heads: int | None) -> int:
    return len(role_rows(spec, "v", n_heads))


# --- chaining rules -------------------------------------------------------------------------------------------


def out_dim(spec: MatrixSpec) -> int:
    return spec.shape[1] if spec.kind == "embedding" else spec.shape[0]


def chain_kind(
    a: MatrixSpec, b: MatrixSpec, cols=None, heads=None, tied: bool = False, value: bool | None = None, rows=None
) -> PairSpec | None:
    """The pair a -> b (b read through input channels `cols`, a through its output rows `rows`), or None when
    their shapes do not chain. `value`: a is a separate value projection (default: judged by its name), which
    under GQA feeds an output projection reading H / H_kv times as many inputs."""
    if b.kind == "embedding" and not tied:
        return None
    width = cols[1] - cols[0] if cols else b.in_channels
    if cols and not (0 <= cols[0] < cols[1] <= b.in_channels):
        return None
    if rows is not None:  # a row block of prev (one half of a fused gate/up projection)
        if a.kind in ("embedding", "attention_in_proj") or not (0 <= rows[0] < rows[1] <= a.shape[0]):
            return None
        if rows[1] - rows[0] != width:
            return None
        return PairSpec(a.name, b.name, "plain", None, None, tuple(cols) if cols else None, None, tuple(rows))

    def pair(kind, h=None, hkv=None):
        return PairSpec(a.name, b.name, kind, h, hkv, tuple(cols) if cols else None)

    if a.kind == "attention_in_proj" and layout_fits(a, heads):
        layout, H, Hkv = layout_of(a, heads)
        v = value_dim(a, heads)
        if v == width:
            return pair("vo", H, Hkv)
        if H and Hkv and v * (H // Hkv) == width:  # GQA: each key/value head serves H / H_kv query heads
            return pair("vo", H, Hkv)
        return None
    if out_dim(a) == width:
        return pair("embedding" if a.kind == "embedding" else "plain")
    if a.kind == "lstm" and a.shape[0] == 4 * width:
        return pair("lstm_gate")
    if value is None:
        value = bool(_V.search(a.name))
    if value and heads and a.kind == "linear" and width % out_dim(a) == 0 and width > out_dim(a):
        dh = width // heads
        if out_dim(a) % dh == 0:  # a value projection with fewer heads (GQA) read by the output projection
            return pair("vo", heads, out_dim(a) // dh)
    return None


def qk_pair(q: MatrixSpec, k: MatrixSpec, heads: int | None) -> PairSpec | None:
    """The query-key pair of a fused projection with itself, or of a query projection with its key projection
    (under GQA the key projection has H_kv = rows(k) / head_dim heads)."""
    if q.name == k.name:
        layout, H, Hkv = layout_of(q, heads)
        if not H or not layout_fits(q, heads):
            return None
        return PairSpec(q.name, q.name, "qk", H, Hkv)
    if not heads or q.shape[0] % heads or q.shape[1] != k.shape[1]:
        return None
    dh = q.shape[0] // heads
    if k.shape[0] % dh or heads % (k.shape[0] // dh):
        return None
    return PairSpec(q.name, k.name, "qk", heads, k.shape[0] // dh)


def _qk_partner(specs: list[MatrixSpec], i: int) -> MatrixSpec | None:
    """For a separate query projection, the key projection of the same module."""
    m = _Q.search(specs[i].name)
    if not m:
        return None
    prefix = specs[i].name[: m.start(2)]
    for other in specs:
        km = _K.search(other.name)
        if km and other.name[: km.start(2)] == prefix and other.shape[1] == specs[i].shape[1]:
            return other
    return None


def lstm_pairs(specs: list[MatrixSpec], i: int) -> tuple[list[PairSpec], int]:
    """The paper's pairs of the LSTM module whose first weight is specs[i] (docs/method.md 1.6), and the index
    past its last weight. Per direction d: ih_l -> hh_l, ih_l -> ih_{l+1}, hh_l -> ih_{l+1} for l < L-1, and
    ih_{L-1}, hh_{L-1} -> the next matrix; a bidirectional next is read through d's half of its 2H input."""
    prefix = _LSTM_NAME.match(specs[i].name)["p"]
    weights, j = {}, i
    while j < len(specs) and (m := _LSTM_NAME.match(specs[j].name)) and m["p"] == prefix:
        weights[(m["t"], int(m["l"]), bool(m["r"]))] = specs[j]
        j += 1
    layers = 1 + max(layer for _, layer, _ in weights)
    directions = sorted({r for *_, r in weights})
    H = next(iter(weights.values())).shape[0] // 4
    following = specs[j] if j < len(specs) else None

    def half(b: MatrixSpec, reverse: bool):
        if len(directions) == 2 and b.in_channels == 2 * H:
            return (H, 2 * H) if reverse else (0, H)
        return None

    pairs = []
    for layer in range(layers):
        for r in directions:
            ih, hh = weights.get(("ih", layer, r)), weights.get(("hh", layer, r))
            nxt = weights.get(("ih", layer + 1, r)) if layer + 1 < layers else following
            if layer + 1 < layers and ih and hh:
                pairs.append(chain_kind(ih, hh))
            for a in (ih, hh) if nxt is not None else ():
                if a is not None:
                    pairs.append(chain_kind(a, nxt, half(nxt, r)))
    return [p for p in pairs if p is not None], j


def find_pairs(specs: list[MatrixSpec], n_heads: int | None) -> list[PairSpec]:
    """Alignment pairs between consecutive matrices whose shapes chain, query-key pairs (when heads are known) and
    the paper's LSTM pairs: the fallback where no architecture states the model's pairs."""
    pairs: list[PairSpec] = []
    qk_names = set()
    for i, spec in enumerate(specs):
        partner = _qk_partner(specs, i)
        if partner is not None:
            qk_names.update({spec.name, partner.name})
            if p := qk_pair(spec, partner, n_heads):
                pairs.append(p)
    i = 0
    while i < len(specs):
        a = specs[i]
        if a.kind == "lstm" and _LSTM_NAME.match(a.name):
            got, i = lstm_pairs(specs, i)
            pairs += got
            continue
        if a.kind == "attention_in_proj" and n_heads and (p := qk_pair(a, a, n_heads)):
            pairs.append(p)
        b = specs[i + 1] if i + 1 < len(specs) else None
        if b is not None and a.name not in qk_names:  # q -> k and k -> v chain by shape but mean nothing
            # an expert is read only by its own matrices (its router's choice is not a fixed chain)
            if (b.expert is None or a.expert == b.expert) and (p := chain_kind(a, b, heads=n_heads)):
                pairs.append(p)
        i += 1
    return pairs


# --- --alignment-pairs FILE ----------------------------------------------------------------------------------

_LINE = re.compile(
    r"^(?P<a>[^\s\[]+)(?:\[\s*(?P<rlo>\d+)\s*:\s*(?P<rhi>\d+)\s*\])?\s*(?:->\s*|\s+)(?P<b>[^\s\[]+)"
    r"(?:\s*\[\s*(?::\s*,\s*)?(?P<lo>\d+)\s*:\s*(?P<hi>\d+)\s*\])?$"
)


def read_pairs_file(
    path: Path, specs: list[MatrixSpec], n_heads: int | None, tied: dict[str, str] | None = None
) -> list[PairSpec]:
    """Pairs listed one per line, in the names `specdyn info` shows: `prev -> next` (or `prev next`),
    `prev -> next[:, a:b]` (next read through input channels a..b), `prev[a:b] -> next` (prev's output rows
    a..b: one half of a fused gate/up projection), `name (qk)` or a name written twice (a fused
    query-key pair), `q_proj k_proj` (separate query-key); `#` starts a comment. A tied alias (`lm_head.weight`)
    names the embedding it shares. The kind (value rows, LSTM gate, heads) follows from the matrices, as for the
    automatic pairs. The whole file is checked before any work: the first bad line is a one-line error."""
    tied = tied or {}
    by_name = {s.name: s for s in specs}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not text"
        raise SpecdynError(
            f"{path}: cannot read the pairs file ({why}); pass a text file of `prev next` lines"
        ) from None
    pairs = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if line.endswith("(qk)"):
            line = f"{line[:-4].strip()} {line[:-4].strip()}"
        m = _LINE.match(line)
        if not m:
            raise SpecdynError(
                f"{where}: expected `prev -> next`, `prev -> next[:, a:b]`, `prev[a:b] -> next` or `name (qk)`, "
                f"got {raw.strip()!r}"
            )
        names = [m["a"], m["b"]]
        missing = [n for n in names if n not in by_name and n not in tied]
        if missing:
            raise SpecdynError(f"{where}: unknown matrix {missing[0]!r}; names are as `specdyn info` lists them")
        a = by_name[tied.get(names[0], names[0])]
        b = by_name[tied.get(names[1], names[1])]
        cols = (int(m["lo"]), int(m["hi"])) if m["lo"] is not None else None
        rows = (int(m["rlo"]), int(m["rhi"])) if m["rlo"] is not None else None
        pairs.append(_file_pair(where, a, b, cols, n_heads, names[1] if names[1] in tied else None, rows))
    return pairs


def _file_pair(where, a, b, cols, n_heads, tied_as, rows=None) -> PairSpec:
    if rows is None and (a.name == b.name or (_Q.search(a.name) and _K.search(b.name))):
        if a.name == b.name and a.kind != "attention_in_proj":
            raise SpecdynError(f"{where}: {a.name} is not a fused q/k/v projection, so it has no query-key pair")
        if not (n_heads or a.fused):
            raise SpecdynError(f"{where}: a query-key pair needs the number of heads; pass --heads")
        p = qk_pair(a, b, n_heads)
        if p is None:
            raise SpecdynError(
                f"{where}: {a.name} {list(a.shape)} and {b.name} {list(b.shape)} do not split into "
                f"{n_heads} query heads and a whole number of key heads"
            )
        return p
    p = chain_kind(a, b, cols, n_heads, tied=tied_as is not None, rows=rows)
    if p is None:
        into = f"input channels {cols[0]}:{cols[1]} of " if cols else ""
        frm = f"rows {rows[0]}:{rows[1]} of " if rows else ""
        raise SpecdynError(
            f"{where}: {frm}{a.name} {list(a.shape)} does not feed {into}{b.name} {list(b.original_shape)}: "
            "the previous layer's output dimension must equal the next layer's input dimension"
        )
    return PairSpec(p.prev, p.next, p.kind, p.heads, p.kv_heads, p.cols, tied_as, p.rows)


# --- slices and diagonals -------------------------------------------------------------------------------------


def slice_needs(pairs: list[PairSpec], specs: list[MatrixSpec]) -> dict[str, set[tuple]]:
    """Which extra slice SVDs each matrix needs for its pairs: ("q", H) / ("k", H_kv) per-head left vectors,
    ("v", H, H_kv) value rows (repeated per query head), ("cols", a, b) a column slice of a next."""
    needs: dict[str, set[tuple]] = {}
    for p in pairs:
        if p.kind == "vo":
            needs.setdefault(p.prev, set()).add(("v", p.heads, p.kv_heads))
        elif p.kind == "qk":
            needs.setdefault(p.prev, set()).add(("q", p.heads))
            needs.setdefault(p.next, set()).add(("k", p.kv_heads or p.heads))
        if p.cols:
            needs.setdefault(p.next, set()).add(("cols", *p.cols))
        if p.rows:
            needs.setdefault(p.prev, set()).add(("rows", *p.rows))
    return needs


def slice_vectors(W: np.ndarray, spec: MatrixSpec, needs: set[tuple], n_heads: int | None, engine) -> dict:
    """The slice SVDs of one matrix that its pairs need (computed while W is in memory)."""
    out = {}
    for need in needs:
        if need[0] in ("q", "k"):
            H = need[1] or n_heads
            rows = W[role_rows(spec, need[0], H)]
            out[need] = head_left_vectors(rows.reshape(H, rows.shape[0] // H, W.shape[1]))
        elif need[0] == "v":
            H, Hkv = need[1] or n_heads, need[2] or need[1] or n_heads
            rows = W[role_rows(spec, "v", H)]
            rank = rows.shape[0]
            if H and Hkv and H != Hkv:  # repeat_kv: query head h reads key/value head h // (H / H_kv)
                rows = np.repeat(rows.reshape(Hkv, -1, W.shape[1]), H // Hkv, axis=0).reshape(-1, W.shape[1])
            sp = engine(np.ascontiguousarray(rows))
            # the repeated map has rank <= H_kv * d_h: directions past it span its null space, arbitrary
            out[need] = Spectrum(sp.s[:rank], sp.U[:, :rank], sp.V[:, :rank]) if rank < sp.U.shape[1] else sp
        elif need[0] == "cols":
            k = spec.kernel_size
            out[need] = engine(np.ascontiguousarray(W[:, need[1] * k : need[2] * k]))
        elif need[0] == "rows":
            out[need] = engine(np.ascontiguousarray(W[need[1] : need[2]]))
    return out


def _centre_tap(spec: MatrixSpec, V: np.ndarray, c_in: int | None = None) -> np.ndarray:
    """Rows of V (an input-space basis of a (transposed) conv) at the centre kernel tap: (c_in, r)."""
    if spec.kind not in ("conv", "tconv"):
        return V
    kernel = spec.original_shape[2:]
    V = V.reshape(c_in or spec.in_channels, *kernel, V.shape[-1])
    centre = tuple(k // 2 for k in kernel)
    return V[(slice(None), *centre)]


def pair_diag(pair: PairSpec, specs: dict[str, MatrixSpec], spectra: dict[str, Spectrum], slices: dict) -> np.ndarray:
    """The alignment diagonal of one pair at one checkpoint (length <= top)."""
    a, b = specs[pair.prev], specs[pair.next]
    if pair.kind == "qk":
        H = pair.heads
        q = slices[pair.prev][("q", H)]  # (H, d_h, d_h)
        k = slices[pair.next][("k", pair.kv_heads or H)]  # (H_kv, d_h, d_h)
        k = k[np.arange(q.shape[0]) // (q.shape[0] // k.shape[0])]  # key head of each query head
        per_head = np.abs((q * k).sum(axis=-2))  # (H, d_h): |<u_q,h,i, u_k,h//g,i>|
        return per_head.mean(axis=0)
    if pair.kind == "embedding":
        U_prev = spectra[a.name].V
    elif pair.kind == "vo":
        U_prev = slices[a.name][("v", pair.heads, pair.kv_heads)].U
    elif pair.kind == "lstm_gate":
        H = a.shape[0] // 4
        U_prev = spectra[a.name].U[2 * H : 3 * H]
    elif pair.rows:
        U_prev = slices[a.name][("rows", *pair.rows)].U
    else:
        U_prev = spectra[a.name].U
    if pair.cols:
        V_next = _centre_tap(b, slices[b.name][("cols", *pair.cols)].V, pair.cols[1] - pair.cols[0])
    else:
        V_next = _centre_tap(b, spectra[b.name].V)
    return alignment_diag(U_prev, V_next)
