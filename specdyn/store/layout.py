"""Where a store is and what it holds: names, paths and the zarr layout (docs/store.md is the contract).

Every array along the checkpoint axis has chunks of exactly one checkpoint, so concurrent writers of different
rows never lose data; `done[i]` is written last, after every array of row i.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from specdyn.spectral.matrices import ROWS_ARE_OUTPUTS, TRANSPOSED, Cut, MatrixSpec
from specdyn.spectral.metrics import metrics_of
from specdyn.spectral.pairs import PairSpec
from specdyn.version import __version__

STORE_NAME = "specdyn.zarr"  # the default store inside a run dir
SCHEMA_VERSION = 2  # 2: matrices of unsafe names under hashed keys, many matrices packed by shape (`svd/`)
LOCK_NAME = ".specdyn.lock"
# The (checkpoint, matrix) metric arrays, from their one declaration (spectral.metrics.METRICS), in store order.
ROW_METRICS = metrics_of("spectrum")  # computed per checkpoint from its own SVD
DERIVED_METRICS = metrics_of("derived")  # against other checkpoints
# WeightWatcher's columns (docs/method.md §10), computed from the stored singular values by `derive`.
HEAVY_METRICS = metrics_of("heavy_tail")
METRICS = metrics_of()
# Arrays relative to a base model (docs/method.md §11), only in stores analyzed with one (attrs `base`):
# (checkpoint, matrix) metrics, and `intruders` (checkpoint, matrix, epsilon) over the `epsilon` thresholds.
BASE_METRICS = metrics_of("base")
BASE_ARRAYS = (*BASE_METRICS, "intruders")
STORED_METRICS = tuple(m for m in METRICS if m not in BASE_METRICS)  # in every store (the migration adds them)
IDENTITY = ("step", "checkpoint", "source")  # what names a row
# Size and modification time of each row's checkpoint when it was read (-1: unknown, stores made before these
# arrays existed): a rerun recomputes a row whose file changed since. Optional, so older stores still read.
FILE_ARRAYS = ("file_bytes", "file_mtime_ns")
# The arrays every schema-1 store has (listed, not derived from METRICS, so later additions stay optional).
SCHEMA1_ROOT = (
    "done", "step", "checkpoint", "source", "matrix", "pair",
    "effective_rank", "count90", "stable_rank", "spectral_norm", "frobenius_norm", "nuclear_norm", "gini",
    "stability_score", "subspace_overlap", "stability_prev_score", "stability", "alignment", "alignment_score",
)  # fmt: skip
SCHEMA1_MATRIX = ("sv", "U", "V")


def default_store(run_dir: Path) -> Path:
    return Path(run_dir) / STORE_NAME


def resolve_store(path: Path) -> Path:
    """A store path, or a run dir holding the default store."""
    path = Path(path)
    if not (path / "zarr.json").exists() and (path / STORE_NAME / "zarr.json").exists():
        return path / STORE_NAME
    return path


def is_store(path: Path) -> bool:
    meta = Path(path) / "zarr.json"
    if not meta.exists():
        return False
    try:
        return "specdyn" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


# Chunk files named c.0.0.0 beside the array's zarr.json instead of in nested c/0/0/ folders: one folder per
# array rather than per chunk, which a row's hundreds of writes would otherwise each create (ext4's mkdir was 3%
# of analyze). Readers follow the encoding recorded in each array's metadata; older stores keep theirs.
CHUNK_KEYS = {"name": "default", "separator": "."}


def _array(group, name, shape, chunks, dtype, dims, fill=np.nan, compressors="auto", **attrs):
    arr = group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims, overwrite=False,
        compressors=compressors, chunk_key_encoding=CHUNK_KEYS,
    )  # fmt: skip
    if attrs:
        arr.attrs.update(attrs)
    return arr


def create_layout(root, specs: list[MatrixSpec], pairs: list[PairSpec], top: int, attrs: dict) -> None:
    """Create every array of an empty store with zero checkpoints (rows are added with `resize_rows`)."""
    M, P = len(specs), len(pairs)
    root.attrs["specdyn"] = {"schema_version": SCHEMA_VERSION, "specdyn_version": __version__, "top": top, **attrs}
    _array(root, "step", (0,), (1,), "int64", ("checkpoint",), fill=-1, long_name="training step")
    _array(root, "checkpoint", (0,), (1,), str, ("checkpoint",), fill="", long_name="path relative to its run dir")
    _array(root, "source", (0,), (1,), "int16", ("checkpoint",), fill=-1, long_name="index into attrs sources")
    _array(root, "done", (0,), (1,), "bool", ("checkpoint",), fill=False, long_name="row complete")
    for name in FILE_ARRAYS:
        file_array(root, name, 0)
    mat = _array(root, "matrix", (M,), (max(M, 1),), str, ("matrix",), fill="")
    mat[:] = np.array([s.name for s in specs], dtype=object)
    mat.attrs.update(
        {
            "shapes": {s.name: list(s.shape) for s in specs},
            "original_shapes": {s.name: list(s.original_shape) for s in specs},
            "kinds": {s.name: s.kind for s in specs},
            "orientation": {s.name: s.orientation for s in specs},
            "fused": {s.name: list(s.fused) for s in specs if s.fused},
            "expert": {s.name: s.expert for s in specs if s.expert is not None},
            "cut": {s.name: s.cut.to_json() for s in specs if s.cut is not None},
        }
    )
    pair = _array(root, "pair", (P,), (max(P, 1),), str, ("pair",), fill="")
    if P:
        pair[:] = np.array([p.name for p in pairs], dtype=object)
    pair.attrs["pairs"] = [p.to_json() for p in pairs]
    for name in METRICS:
        if name not in BASE_METRICS:  # those only with a base model (add_base_arrays)
            metric_array(root, name, 0, M)
    t = max(top, 1)  # chunk sizes: a values-only store (top 0) has zero-width vector arrays
    _array(root, "stability", (0, M, top), (1, max(M, 1), t), "float32", ("checkpoint", "matrix", "rank"))
    _array(root, "alignment", (0, P, top), (1, max(P, 1), t), "float32", ("checkpoint", "pair", "rank"))
    _array(root, "alignment_score", (0, P), (1, max(P, 1)), "float64", ("checkpoint", "pair"))
    if len(specs) > PACK_ABOVE:
        _packed_matrices(root, mat, specs, top)
        return
    keys = {s.name: matrix_key(s.name) for s in specs}
    if any(k != n for n, k in keys.items()):
        mat.attrs["keys"] = {n: k for n, k in keys.items() if k != n}
    for s in specs:
        g = root.require_group(f"matrices/{keys[s.name]}")
        m, n = s.shape
        r = min(top, s.k)
        _array(g, "sv", (0, s.k), (1, s.k), "float64", ("checkpoint", "k"))
        # Singular vectors are float32 noise to a compressor (zstd saves 3% of them) but it doubles the cost of
        # writing them and quadruples that of reading them back: they are stored uncompressed.
        _array(g, "U", (0, m, r), (1, m, max(r, 1)), "float32", ("checkpoint", "m", "top"), compressors=None)
        _array(g, "V", (0, n, r), (1, n, max(r, 1)), "float32", ("checkpoint", "n", "top"), compressors=None)


def _packed_matrices(root, mat, specs: list[MatrixSpec], top: int) -> None:
    """Many matrices (a mixture of experts): one `svd/<m>x<n>/{sv,U,V}` group per matrix shape, the matrices of
    that shape along a `member` axis, in zarr shards of about SHARD_BYTES per checkpoint. Files grow with the
    bytes of a row, not with the number of matrices."""
    buckets: dict[str, list[MatrixSpec]] = {}
    for s in specs:
        buckets.setdefault(f"{s.shape[0]}x{s.shape[1]}", []).append(s)
    mat.attrs["slots"] = {s.name: [b, j] for b, members in buckets.items() for j, s in enumerate(members)}
    for b, members in buckets.items():
        (m, n), k, count = members[0].shape, members[0].k, len(members)
        r = min(top, k)
        g = root.require_group(f"svd/{b}")
        dims = ("checkpoint", f"member_{b}")
        # One member count per shard for all three arrays, so a run of members written at once covers whole shards.
        # Inside a shard, a chunk holds `inner` members (about INNER_BYTES): a matrix reads with that chunk alone,
        # and a row's write encodes bytes / INNER_BYTES chunks rather than one per matrix (zarr spends ~0.5 ms on
        # each: 150,000 one-matrix chunks took 290 s a row).
        per = 4 * max(m, n) * max(r, 1)
        inner = max(1, min(count, INNER_BYTES // per))
        shard = inner * max(1, min(-(-count // inner), SHARD_BYTES // (per * inner)))
        for name, tail, dim, dtype, zstd in (
            ("sv", (k,), ("k",), "float64", True),
            ("U", (m, r), ("m", "top"), "float32", False),
            ("V", (n, r), ("n", "top"), "float32", False),
        ):
            chunk = tuple(max(x, 1) for x in tail)
            arr = g.create_array(
                name, shape=(0, count, *tail), chunks=(1, inner, *chunk), shards=(1, shard, *chunk), dtype=dtype,
                fill_value=np.nan, dimension_names=dims + dim, overwrite=False,
                compressors="auto" if zstd else None, chunk_key_encoding=CHUNK_KEYS,
            )  # fmt: skip
            arr.attrs["matrices"] = [s.name for s in members]


# Stores of more matrices than this pack them by shape (`svd/`), so that files do not grow with their number.
PACK_ABOVE = 1024
SHARD_BYTES = 8 << 20  # per checkpoint: a shard is written whole by one call when its matrices are all in
INNER_BYTES = 64 << 10
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def matrix_key(name: str) -> str:
    """The folder name of a matrix's group: the tensor name where it is a safe single path component, else a
    hash of it (the name itself is kept as data in `matrix`; docs/store.md)."""
    if _SAFE.fullmatch(name) and len(name.encode()) <= 200 and name.lower() != "zarr.json":
        return name
    import hashlib

    tail = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[-40:].lstrip(".")
    return f"~{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}-{tail}"


class Slots:
    """Where each matrix's sv, U and V are: its own group `matrices/<key>/` (stores of schema 1, and stores of
    few matrices), or a member of its shape's `svd/<m>x<n>/` arrays (`PACK_ABOVE`)."""

    def __init__(self, root):
        a = root["matrix"].attrs
        self.root = root
        self.packed = a.get("slots")
        self.keys = a.get("keys") or {}
        self._groups: dict[str, tuple] = {}

    def group(self, name: str) -> str:
        if self.packed:
            return f"svd/{self.packed[name][0]}"
        return f"matrices/{self.keys.get(name, name)}"

    def member(self, name: str) -> int | None:
        return self.packed[name][1] if self.packed else None

    def arrays(self, name: str) -> tuple:
        """(sv, U, V) zarr arrays holding the matrix (shared by a bucket's members when packed)."""
        g = self.group(name)
        if g not in self._groups:
            self._groups[g] = tuple(self.root[f"{g}/{a}"] for a in ("sv", "U", "V"))
        return self._groups[g]

    def groups(self) -> list[str]:
        """Every group holding matrices, in matrix order."""
        return list(dict.fromkeys(self.group(n) for n in matrix_names(self.root)))

    def select(self, name: str, rows) -> tuple:
        """The selection of `rows` (an int, a slice or an index array) of one matrix in its arrays."""
        j = self.member(name)
        return (rows,) if j is None else (rows, j)


def metric_array(root, name: str, rows: int, M: int):
    """A (checkpoint, matrix) metric array of NaN, one checkpoint per chunk."""
    return _array(root, name, (rows, M), (1, max(M, 1)), "float64", ("checkpoint", "matrix"))


_FILE_LABELS = {"file_bytes": "checkpoint size (bytes)", "file_mtime_ns": "checkpoint mtime (ns)"}


def file_array(root, name: str, rows: int):
    return _array(root, name, (rows,), (1,), "int64", ("checkpoint",), fill=-1, long_name=_FILE_LABELS[name])


def array_names(group) -> set[str]:
    """The names of a group's arrays. Stores of older versions hold their lock file inside, which zarr warns
    about when it lists the folder: that file is specdyn's own, so the warning is noise."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
        return set(group.array_keys())


def missing_arrays(root, have: set[str] | None = None) -> list[str]:
    """The arrays a schema-1 store must have that this one lacks (a creation killed part-way, in old versions)."""
    have = array_names(root) if have is None else have
    missing = [n for n in SCHEMA1_ROOT if n not in have]
    if "matrix" in have:
        slots = Slots(root)
        for g in slots.groups():
            try:
                have_m = array_names(root[g])
            except KeyError:
                have_m = set()
            missing += [f"{g}/{a}" for a in SCHEMA1_MATRIX if a not in have_m]
    return missing


def matrix_names(root) -> list[str]:
    return [str(m) for m in root["matrix"][:]]


def spec_from_attrs(a, name: str) -> MatrixSpec:
    """One MatrixSpec from the `matrix` array's attrs (stores made before `orientation`/`fused`: rows=outputs)."""
    fused = (a.get("fused") or {}).get(name)
    cut = (a.get("cut") or {}).get(name)
    return MatrixSpec(
        name,
        tuple(a["original_shapes"][name]),
        a["kinds"][name],
        transposed=(a.get("orientation") or {}).get(name, ROWS_ARE_OUTPUTS) == TRANSPOSED,
        fused=tuple(fused) if fused else None,
        expert=(a.get("expert") or {}).get(name),
        cut=Cut.from_json(cut) if cut else None,
    )


def specs_of(root) -> list[MatrixSpec]:
    """The MatrixSpecs a store was made with, in its matrix order."""
    a = root["matrix"].attrs
    return [spec_from_attrs(a, n) for n in matrix_names(root)]


def pair_docs(root) -> list[dict]:
    return list(root["pair"].attrs.get("pairs", []))


def pairs_of(root) -> list[PairSpec]:
    """The PairSpecs a store was made with, in its pair order."""
    return [PairSpec.from_json(p) for p in pair_docs(root)]


def checkpoint_arrays(root):
    """Every array with a leading checkpoint axis (the ones `resize_rows` grows); `done` first. Arrays a store
    opened without migration lacks (older stores: file identity, metrics declared since) are left out."""
    have = array_names(root)
    out = [root[name] for name in ("done", *IDENTITY)]
    out += [root[name] for name in ("stability", "alignment", "alignment_score")]
    for g in Slots(root).groups():
        out += [root[f"{g}/{a}"] for a in SCHEMA1_MATRIX]
    return out + [root[name] for name in (*FILE_ARRAYS, *STORED_METRICS, *BASE_ARRAYS) if name in have]


def add_base_arrays(root, epsilons) -> None:
    """Create the base-relative arrays (NaN, as many rows as the store) and the `epsilon` thresholds, unless the
    store holds them."""
    rows, M, E = root["done"].shape[0], len(matrix_names(root)), len(epsilons)
    if "epsilon" in array_names(root):
        return
    eps = _array(root, "epsilon", (E,), (E,), "float64", ("epsilon",), long_name="intruder threshold on |cos|")
    eps[:] = np.asarray(epsilons, dtype=np.float64)
    for name in BASE_METRICS:
        _array(root, name, (rows, M), (1, max(M, 1)), "float64", ("checkpoint", "matrix"))
    _array(root, "intruders", (rows, M, E), (1, max(M, 1), E), "float64", ("checkpoint", "matrix", "epsilon"))


def read_attrs(root) -> dict:
    return dict(root.attrs.get("specdyn", {}))
