"""The specdyn zarr store: its layout (docs/store.md is the contract), safe writing, and the reading API.

Writing rules that make the store safe to kill and to share:
- every array along the checkpoint axis has chunks of exactly one checkpoint, so concurrent writers of different
  rows never lose data (ecosystem.md 2); `done[i]` is written last, after every array of row i;
- a write session holds an exclusive lock file inside the store and removes the consolidated metadata first,
  re-consolidating only when it ends cleanly, so a killed run never leaves stale metadata behind;
- nothing ever opens the store with mode "w"; `--overwrite` deletes it explicitly.
"""

import contextlib
import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import zarr

from specdyn import __version__
from specdyn.errors import EXIT_NOT_FOUND, EXIT_STORE_BUSY, SpecdynError
from specdyn.matrices import MatrixSpec
from specdyn.metrics import SPECTRUM_METRICS
from specdyn.pairs import PairSpec

SCHEMA_VERSION = 1
LOCK_NAME = ".specdyn.lock"
ROW_METRICS = tuple(SPECTRUM_METRICS)  # computed per checkpoint from its own SVD
DERIVED_METRICS = ("stability_score", "subspace_overlap", "stability_prev_score")  # against other checkpoints
METRICS = ROW_METRICS + DERIVED_METRICS


# --------------------------------------------------------------------------------------------- write sessions


def acquire_lock(path: Path, purpose: str = "analyze"):
    """Take the store's exclusive lock (released by the OS if the process dies) and return its open file,
    or refuse clearly if another process holds it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise SpecdynError(
            f"{path}: the store is in use by {holder}; wait for it to finish (or stop it) and rerun",
            code=EXIT_STORE_BUSY,
        )
    f.seek(0)
    f.truncate()
    f.write(f"specdyn {purpose} (pid {os.getpid()})")
    f.flush()
    return f


@contextlib.contextmanager
def locked(path: Path, purpose: str = "analyze"):
    """Hold the store's exclusive lock for the duration of the block."""
    f = acquire_lock(path, purpose)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def drop_consolidated(path: Path) -> None:
    """Remove consolidated metadata from the root zarr.json (atomically), before any write."""
    meta = Path(path) / "zarr.json"
    if not meta.exists():
        return
    doc = json.loads(meta.read_text())
    if doc.pop("consolidated_metadata", None) is None:
        return
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, meta)


def consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Consolidated metadata is currently not part of the v3 spec"
        zarr.consolidate_metadata(str(path))


@contextlib.contextmanager
def write_session(path: Path, purpose: str = "analyze", lock: bool = True):
    """Lock the store (unless the caller holds the lock), drop stale consolidated metadata, yield the root group;
    consolidate on a clean exit."""
    with locked(path, purpose) if lock else contextlib.nullcontext():
        drop_consolidated(path)
        root = zarr.open_group(str(path), mode="a", use_consolidated=False)
        yield root
        consolidate(path)


def remove_store(path: Path) -> None:
    """Delete a store (for --overwrite); refuses on anything that is not a specdyn store."""
    path = Path(path)
    if not path.exists():
        return
    if not is_store(path):
        raise SpecdynError(f"{path}: exists and is not a specdyn store; refusing to delete it, choose another --out")
    with locked(path, "overwrite"):
        for child in path.iterdir():
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def is_store(path: Path) -> bool:
    meta = Path(path) / "zarr.json"
    if not meta.exists():
        return False
    try:
        return "specdyn" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- layout


def _array(group, name, shape, chunks, dtype, dims, fill=np.nan, **attrs):
    arr = group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims, overwrite=False
    )
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
    mat = _array(root, "matrix", (M,), (max(M, 1),), str, ("matrix",), fill="")
    mat[:] = np.array([s.name for s in specs], dtype=object)
    mat.attrs.update(
        {
            "shapes": {s.name: list(s.shape) for s in specs},
            "original_shapes": {s.name: list(s.original_shape) for s in specs},
            "kinds": {s.name: s.kind for s in specs},
        }
    )
    pair = _array(root, "pair", (P,), (max(P, 1),), str, ("pair",), fill="")
    if P:
        pair[:] = np.array([p.name for p in pairs], dtype=object)
    pair.attrs["pairs"] = [p.to_json() for p in pairs]
    for name in METRICS:
        _array(root, name, (0, M), (1, max(M, 1)), "float64", ("checkpoint", "matrix"))
    _array(root, "stability", (0, M, top), (1, max(M, 1), top), "float32", ("checkpoint", "matrix", "rank"))
    _array(root, "alignment", (0, P, top), (1, max(P, 1), top), "float32", ("checkpoint", "pair", "rank"))
    _array(root, "alignment_score", (0, P), (1, max(P, 1)), "float64", ("checkpoint", "pair"))
    for s in specs:
        g = root.require_group(f"matrices/{s.name}")
        m, n = s.shape
        r = min(top, s.k)
        _array(g, "sv", (0, s.k), (1, s.k), "float64", ("checkpoint", "k"))
        _array(g, "U", (0, m, r), (1, m, r), "float32", ("checkpoint", "m", "top"))
        _array(g, "V", (0, n, r), (1, n, r), "float32", ("checkpoint", "n", "top"))


def checkpoint_arrays(root):
    """Every array with a leading checkpoint axis (the ones `resize_rows` grows)."""
    out = [root[name] for name in ("done", "step", "checkpoint", "source", *METRICS)]
    out += [root["stability"], root["alignment"], root["alignment_score"]]
    for name in root["matrix"][:]:
        g = root[f"matrices/{name}"]
        out += [g["sv"], g["U"], g["V"]]
    return out


def resize_rows(root, n: int) -> None:
    """Give every checkpoint-axis array n rows; `done` first, so a kill part-way leaves only rows marked undone."""
    for arr in checkpoint_arrays(root):
        if arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))


def write_row(root, i: int, step: int, relpath: str, source: int, row, specs: list[MatrixSpec]) -> None:
    """Write one checkpoint's results (an `analysis.RowResult`) into row i, then mark it done."""
    root["done"][i] = False
    root["step"][i] = step
    root["checkpoint"][i] = relpath
    root["source"][i] = source
    for name in ROW_METRICS:
        root[name][i] = row.metrics[name]
    top = root["alignment"].shape[-1]
    root["alignment"][i] = row.alignment[:, :top]
    root["alignment_score"][i] = row.alignment_score
    for spec, sp in zip(specs, row.spectra):
        g = root[f"matrices/{spec.name}"]
        g["sv"][i] = sp.s
        g["U"][i] = sp.U
        g["V"][i] = sp.V
    root["done"][i] = True


def read_attrs(root) -> dict:
    return dict(root.attrs.get("specdyn", {}))


def update_attrs(root, **changes) -> None:
    attrs = read_attrs(root)
    attrs.update(changes)
    root.attrs["specdyn"] = attrs


# --------------------------------------------------------------------------------------------- reordering rows


def _side(store: Path, what: str) -> Path:
    return store.with_name(f"{store.name}.{what}-tmp")


def recoverable(store: Path) -> bool:
    return _side(store, "replaced").exists()


def recover(store: Path) -> None:
    """Finish or undo a rebuild that was killed: the old store is kept until the new one is in place."""
    replaced, rebuilt = _side(store, "replaced"), _side(store, "rebuild")
    if replaced.exists():
        if is_store(store):
            shutil.rmtree(replaced)
        else:
            if store.exists():
                shutil.rmtree(store)
            os.rename(replaced, store)
    if rebuilt.exists():
        shutil.rmtree(rebuilt)


def rebuild(store: Path, root, rows: list[dict], specs: list[MatrixSpec], pairs: list[PairSpec], top: int):
    """Write a new store beside the old one with the done rows (dicts with "done" and the old "row") at their new
    positions, then swap it in. Returns the new root and the new store's lock (taken before the swap)."""
    tmp = _side(store, "rebuild")
    if tmp.exists():
        shutil.rmtree(tmp)
    new = zarr.open_group(str(tmp), mode="w-")
    create_layout(new, specs, pairs, top, {})
    new.attrs["specdyn"] = read_attrs(root)
    resize_rows(new, len(rows))
    old_arrays, new_arrays = checkpoint_arrays(root), checkpoint_arrays(new)
    for j, r in enumerate(rows):
        if r["done"]:
            for a, b in zip(old_arrays[1:], new_arrays[1:]):  # `done` (index 0) is written last
                b[j] = a[r["row"]]
            new_arrays[0][j] = True
    for child in store.iterdir():  # groups other commands added (evals/...) travel unchanged
        if child.is_dir() and not (tmp / child.name).exists():
            shutil.copytree(child, tmp / child.name)
    lock = acquire_lock(tmp)
    replaced = _side(store, "replaced")
    os.rename(store, replaced)
    os.rename(tmp, store)
    shutil.rmtree(replaced)
    return zarr.open_group(str(store), mode="a", use_consolidated=False), lock


# --------------------------------------------------------------------------------------------- reading


class SpectralStore:
    """Read-only view of a store: numpy arrays over the completed checkpoints, and xarray views.

    >>> st = specdyn.open_store("run/specdyn.zarr")            # doctest: +SKIP
    >>> st.steps, st.matrices[:2], st.metric("effective_rank").shape   # doctest: +SKIP
    """

    def __init__(self, path: Path, root):
        self.path = Path(path)
        self.root = root
        self.attrs = read_attrs(root)
        done = root["done"][:]
        self.rows = np.flatnonzero(done)  # physical rows of completed checkpoints

    @classmethod
    def open(cls, path) -> "SpectralStore":
        path = Path(path)
        if not is_store(path):
            hint = "run `specdyn analyze RUN_DIR` first" if not path.exists() else "it is not a specdyn store"
            raise SpecdynError(f"{path}: no specdyn store here; {hint}", code=EXIT_NOT_FOUND)
        root = zarr.open_group(str(path), mode="r")
        return cls(path, root)

    # -- axes
    @property
    def steps(self) -> np.ndarray:
        return self.root["step"][:][self.rows]

    @property
    def checkpoints(self) -> list[str]:
        return [str(c) for c in self.root["checkpoint"][:][self.rows]]

    @property
    def sources(self) -> list[dict]:
        return list(self.attrs.get("sources", []))

    @property
    def run_dirs(self) -> list[Path]:
        """The run directory of every source, resolved relative to the store when stored relative."""
        return [(self.path.parent / s["run_dir"]).resolve() for s in self.sources]

    @property
    def matrices(self) -> list[str]:
        return [str(m) for m in self.root["matrix"][:]]

    def matrix_spec(self, name: str) -> MatrixSpec:
        a = self.root["matrix"].attrs
        self.check_matrix(name)
        return MatrixSpec(name, tuple(a["original_shapes"][name]), a["kinds"][name])

    @property
    def pairs(self) -> list[str]:
        return [p["name"] for p in self.root["pair"].attrs.get("pairs", [])]

    def pair_spec(self, name: str) -> PairSpec:
        for p in self.root["pair"].attrs.get("pairs", []):
            if p["name"] == name:
                return PairSpec(p["prev"], p["next"], p["kind"])
        raise SpecdynError(f"{self.path}: no pair {name!r}; {_close(name, self.pairs)}")

    @property
    def top(self) -> int:
        return int(self.attrs["top"])

    def __len__(self) -> int:
        return len(self.rows)

    # -- data
    def metric(self, name: str) -> np.ndarray:
        """A (checkpoint, matrix) metric such as effective_rank, stable_rank, stability_score."""
        if name not in METRICS:
            raise SpecdynError(f"{self.path}: unknown metric {name!r}; known: {', '.join(METRICS)}")
        return self.root[name][:][self.rows]

    def sv(self, matrix: str) -> np.ndarray:
        """All singular values of a matrix, (checkpoint, k)."""
        return self._matrix_array(matrix, "sv")

    def U(self, matrix: str) -> np.ndarray:
        """Top left singular vectors, (checkpoint, m, top)."""
        return self._matrix_array(matrix, "U")

    def V(self, matrix: str) -> np.ndarray:
        """Top right singular vectors, (checkpoint, n, top)."""
        return self._matrix_array(matrix, "V")

    def stability(self, matrix: str | None = None) -> np.ndarray:
        """SVA diagonal against the final checkpoint: (checkpoint, matrix, rank), or (checkpoint, rank) for one."""
        data = self.root["stability"][:][self.rows]
        return data if matrix is None else data[:, self.matrices.index(self.check_matrix(matrix))]

    def alignment(self, pair: str | None = None) -> np.ndarray:
        data = self.root["alignment"][:][self.rows]
        if pair is None:
            return data
        if pair not in self.pairs:
            raise SpecdynError(f"{self.path}: no pair {pair!r}; {_close(pair, self.pairs)}")
        return data[:, self.pairs.index(pair)]

    def alignment_score(self) -> np.ndarray:
        return self.root["alignment_score"][:][self.rows]

    def _matrix_array(self, matrix: str, what: str) -> np.ndarray:
        self.check_matrix(matrix)
        arr = self.root[f"matrices/{matrix}/{what}"]
        return arr.get_orthogonal_selection((self.rows,) + (slice(None),) * (arr.ndim - 1))

    def check_matrix(self, name: str) -> str:
        if name not in self.matrices:
            raise SpecdynError(f"{self.path}: no matrix {name!r}; {_close(name, self.matrices)}")
        return name

    def to_xarray(self):
        """The root arrays as an xarray.Dataset over completed checkpoints (needs the `xarray` extra)."""
        import xarray as xr

        ds = xr.open_zarr(str(self.path), consolidated=None)
        return ds.isel(checkpoint=self.rows).set_coords(["step", "source", "done"])


def _close(name: str, options: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, options, n=3, cutoff=0.4)
    if near:
        return "did you mean " + ", ".join(repr(n) for n in near) + "?"
    return f"it has {len(options)}: " + ", ".join(options[:8]) + (" ..." if len(options) > 8 else "")
