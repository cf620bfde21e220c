"""Reading a store: `SpectralStore`, numpy arrays over the completed checkpoints, and an xarray view."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specdyn.errors import EXIT_NOT_FOUND, SpecdynError
from specdyn.files import name_path
from specdyn.names import close_names, resolve, shorten_pairs
from specdyn.spectral.matrices import MatrixSpec
from specdyn.spectral.pairs import PairSpec
from specdyn.store import damage
from specdyn.store.damage import refuse_damaged
from specdyn.store.handle import Store
from specdyn.store.layout import (
    BASE_METRICS,
    HEAVY_METRICS,
    METRICS,
    SCHEMA_VERSION,
    Slots,
    is_store,
    matrix_names,
    pair_docs,
    read_attrs,
    resolve_store,
    spec_from_attrs,
)
from specdyn.store.results import has_group

_warned_newer: set[str] = set()  # stores already warned about in this process (one line each)


class SpectralStore:
    """Read-only view of a store: numpy arrays over the completed checkpoints, and xarray views.

    >>> st = specdyn.open_store("run/specdyn.zarr")            # doctest: +SKIP
    >>> st.steps, st.matrices[:2], st.metric("effective_rank").shape   # doctest: +SKIP
    """

    def __init__(self, path: Path, root, handle: Store | None = None):
        self.path = Path(path)
        self.root = root
        self.attrs = read_attrs(root)
        self._arrays = handle.arrays if handle is not None else None
        self.rows = np.flatnonzero(self._read("done"))  # physical rows of completed checkpoints

    @classmethod
    def open(cls, path) -> SpectralStore:
        path = Path(path)
        st = Store(path)  # the store's metadata is read once, here
        if not st.is_specdyn:
            raise SpecdynError(f"{path}: {_not_a_store(path)}", code=EXIT_NOT_FOUND)
        refuse_damaged(path, st.root)  # lost arrays, malformed attributes: one line, not a traceback later
        newer = st.newer()
        if newer and str(path.resolve()) not in _warned_newer:
            from specdyn import console

            _warned_newer.add(str(path.resolve()))
            console.warn(f"{newer}; read here as schema {SCHEMA_VERSION}, some of it may be misread")
        return cls(path, st.root, st)

    # -- axes
    @property
    def steps(self) -> np.ndarray:
        return self._read("step")[self.rows]

    @property
    def checkpoints(self) -> list[str]:
        return [str(c) for c in self._read("checkpoint")[self.rows]]

    @property
    def sources(self) -> list[dict]:
        """Where each source's checkpoints are. A store whose first analyze was stopped before recording them
        (older versions wrote them last) reads its rows as from the store's own folder, with a warning."""
        out = list(self.attrs.get("sources", []))
        need = int(self.source_index.max()) + 1 if len(self.rows) else 0
        if need > len(out):
            from specdyn import console

            console.warn(
                f"{self.path}: its run dir is not recorded (its first analyze was stopped); taking "
                f"{self.path.parent} as the run dir",
                kind="guessed run dirs",
            )
            out += [{"run_dir": "."}] * (need - len(out))
        return out

    @property
    def revisions(self) -> list[str | None]:
        """The hub revision (`step1000`) of every completed checkpoint of a hub cache series, else None."""
        sources = self.sources
        return [
            sources[int(s)].get("revisions", {}).get(c) if int(s) < len(sources) else None
            for s, c in zip(self.source_index, self.checkpoints)
        ]

    @property
    def source_index(self) -> np.ndarray:
        """The index into `sources` (and `run_dirs`) of every completed checkpoint."""
        return self._read("source")[self.rows]

    def checkpoint_paths(self) -> list[Path]:
        """The checkpoint file or folder of every completed row, resolved against its run dir."""
        run_dirs = self.run_dirs
        return [name_path(run_dirs[int(s)], c) for s, c in zip(self.source_index, self.checkpoints)]

    @property
    def run_dirs(self) -> list[Path]:
        """The run directory of every source, resolved relative to the store when stored relative."""
        base = self.path.resolve().parent  # a linked store: relative to where the store really is
        return [(base / s["run_dir"]).resolve() for s in self.sources]

    @property
    def matrices(self) -> list[str]:
        """Matrix names in depth order (read once: a store of 50,000 matrices is asked for them per matrix)."""
        if "_names" not in self.__dict__:
            self._names = matrix_names(self.root)
            self._name_set = frozenset(self._names)
        return self._names

    def matrix_spec(self, name: str) -> MatrixSpec:
        return spec_from_attrs(self.root["matrix"].attrs, self.check_matrix(name))

    @property
    def pairs(self) -> list[str]:
        return [p["name"] for p in pair_docs(self.root)]

    def pair_docs(self) -> list[dict]:
        """Each pair's JSON description (prev, next, kind, name), in pair order."""
        return pair_docs(self.root)

    def pair_spec(self, name: str) -> PairSpec:
        name = self.check_pair(name)
        return next(PairSpec.from_json(p) for p in pair_docs(self.root) if p["name"] == name)

    def check_pair(self, name: str) -> str:
        """The full name of a pair given by its full name or the label figures print (`2.attn → out_proj`)."""
        docs = pair_docs(self.root)
        names = [p["name"] for p in docs]
        if name in names:
            return name
        labels = dict(zip(shorten_pairs(docs, self.matrices), names))
        label = name.replace("->", "→")
        if label in labels:
            return labels[label]
        raise SpecdynError(f"{self.path}: no pair {name!r}; {close_names(name, names)}")

    @property
    def top(self) -> int:
        return int(self.attrs["top"])

    def __len__(self) -> int:
        return len(self.rows)

    # -- data
    def metric(self, name: str) -> np.ndarray:
        """A (checkpoint, matrix) metric such as effective_rank, stable_rank, stability_score. One a store lacks
        (made before the metric was declared, not yet migrated by `specdyn derive`) is computed from the stored
        singular values where it is a function of them, else read as NaN with a one-line warning."""
        if name not in METRICS:
            raise SpecdynError(f"{self.path}: unknown metric {name!r}; known: {', '.join(METRICS)}")
        if name in BASE_METRICS and not self.has_base:  # analyzed without a base model: undefined
            return np.full((len(self.rows), len(self.matrices)), np.nan)
        if self._stored(name):
            return self._read(name)[self.rows]
        return self._missing_metric(name)

    def _stored(self, name: str) -> bool:
        if self._arrays is None:
            self._arrays = set(self.root.array_keys())
        return name in self._arrays and name not in (self.attrs.get("unfilled") or ())

    @property
    def has_base(self) -> bool:
        """Whether the store was analyzed against a base model (`analyze --base`): the base-relative arrays."""
        return "intruders" in self.root

    @property
    def base(self) -> dict | None:
        """What the store records of its base model: path, format, revision, repo, epsilon, intruder_topk."""
        return self.attrs.get("base")

    @property
    def epsilons(self) -> np.ndarray:
        """The intruder thresholds ε of `intruders` (empty without a base model)."""
        return self._read("epsilon") if self.has_base else np.zeros(0)

    def intruders(self, epsilon: float | None = None) -> np.ndarray:
        """Intruder counts (docs/method.md §11.3): (checkpoint, matrix, epsilon), or (checkpoint, matrix) at one ε."""
        if not self.has_base:
            raise SpecdynError(f"{self.path}: analyzed without a base model; rerun `specdyn analyze --base PATH`")
        data = self._read("intruders")[self.rows]
        if epsilon is None:
            return data
        hit = np.flatnonzero(np.isclose(self.epsilons, float(epsilon)))
        if not len(hit):
            have = ", ".join(f"{e:g}" for e in self.epsilons)
            raise SpecdynError(f"{self.path}: no intruder threshold {epsilon:g}; it holds {have}")
        return data[:, :, int(hit[0])]

    def has_heavy_tail(self) -> bool:
        """Whether the store holds the heavy-tail arrays (older stores get them from `specdyn derive`)."""
        return all(self._stored(name) for name in HEAVY_METRICS)

    def _missing_metric(self, name: str) -> np.ndarray:
        """A metric the store does not hold (yet): computed here, never written (reading never writes; `specdyn
        derive STORE` stores it)."""
        from specdyn.spectral.metrics import METRICS as DECLARED

        cache = self.__dict__.setdefault("_computed", {})
        if name in cache:
            return cache[name]
        out = np.full((len(self.rows), len(self.matrices)), np.nan)
        source = DECLARED[name].source
        if source in ("spectrum", "heavy_tail"):
            from specdyn.spectral.heavy_tail import heavy_tail_table
            from specdyn.spectral.metrics import spectrum_metrics

            names = HEAVY_METRICS if source == "heavy_tail" else (name,)
            table = {n: out.copy() for n in names}
            for j, matrix in enumerate(self.matrices):
                sv = self.sv(matrix)
                if source == "heavy_tail":
                    for k, v in heavy_tail_table(sv, max(self.matrix_spec(matrix).shape)).items():
                        table[k][:, j] = v
                else:
                    table[name][:, j] = [spectrum_metrics(s)[name] for s in sv]
            cache.update(table)
            return cache[name]
        from specdyn import console

        console.warn(f"{self.path}: holds no {name} yet (made before it existed); run `specdyn derive {self.path}`")
        cache[name] = out
        return out

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
        data = self._read("stability")[self.rows]
        return data if matrix is None else data[:, self.matrices.index(self.check_matrix(matrix))]

    def alignment(self, pair: str | None = None) -> np.ndarray:
        data = self._read("alignment")[self.rows]
        if pair is None:
            return data
        return data[:, self.pairs.index(self.check_pair(pair))]

    def alignment_score(self) -> np.ndarray:
        return self._read("alignment_score")[self.rows]

    def row_spectrum(self, matrix: str, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(singular values, top U, top V) of a matrix at one physical row (an element of `rows`)."""
        matrix = self.check_matrix(matrix)
        sel = self.slots.select(matrix, row)
        with damage.reading(self.path, f"the arrays of matrix {matrix}"):
            return tuple(arr[sel] for arr in self.slots.arrays(matrix))

    @property
    def slots(self) -> Slots:
        """Where each matrix's arrays are (per-matrix groups, or shape buckets in stores of many matrices)."""
        if "_slots" not in self.__dict__:
            self._slots = Slots(self.root)
        return self._slots

    def has_results(self, name: str) -> bool:
        """Whether an evaluation wrote its `evals/<name>` group into this store."""
        return has_group(self.path, f"evals/{name}")

    def _matrix_array(self, matrix: str, what: str) -> np.ndarray:
        matrix = self.check_matrix(matrix)
        arr = self.slots.arrays(matrix)["sv U V".split().index(what)]
        sel = self.slots.select(matrix, self.rows)
        with damage.reading(self.path, arr.path):
            return arr.get_orthogonal_selection(sel + (slice(None),) * (arr.ndim - len(sel)))

    def _read(self, path: str, rows=None) -> np.ndarray:
        """An array, or these rows (an index or an index array) of it; a chunk that cannot be decoded is a
        one-line error naming the array (store.damage)."""
        with damage.reading(self.path, path):
            arr = self.root[path]
            if rows is None:
                return arr[...]
            if np.ndim(rows) == 0:
                return arr[int(rows)]
            return arr.get_orthogonal_selection((np.asarray(rows),) + (slice(None),) * (arr.ndim - 1))

    def check_matrix(self, name: str) -> str:
        """The full name of a matrix given by its full name, its figure label or a short form naming it alone."""
        names = self.matrices
        if name in self._name_set:  # the usual case, without a scan of every name
            return name
        return resolve(name, names, str(self.path))

    def to_xarray(self):
        """The root arrays as an xarray.Dataset indexed by `step` over completed checkpoints, with checkpoint
        names and matrix labels as coordinates (needs the `xarray` extra)."""
        from specdyn.store.frames import dataset

        return dataset(self)

    def to_dataframe(self, metrics=None, steps=None, matrices=None):
        """A pandas DataFrame, one row per (checkpoint, matrix): run, step, checkpoint, matrix, label, kind, layer
        and one column per metric (all by default); `steps` is a step, a list of steps or `a:b`."""
        from specdyn.store.frames import store_frame

        return store_frame(self, metrics, steps, matrices)


class ResultsStore:
    """A zarr folder that holds only evaluation results (interpolate's standalone `interp.zarr`), with the
    `path` that the figure functions read results from."""

    def __init__(self, path):
        self.path = Path(path)


def open_any(path, results_name: str | None = None):
    """A SpectralStore for a specdyn store (or a run dir holding one), else a ResultsStore for an evaluation-only
    zarr (or a folder holding `results_name`)."""
    p = resolve_store(Path(path))
    if is_store(p):
        return SpectralStore.open(p)
    if (p / "zarr.json").exists():
        return ResultsStore(p)
    if results_name and (Path(path) / results_name / "zarr.json").exists():
        return ResultsStore(Path(path) / results_name)
    return SpectralStore.open(p)  # raises the usual "no specdyn store here"


def _not_a_store(path: Path) -> str:
    """Why `path` is not a store, and what to do: a run folder needs `specdyn analyze` first."""
    if (path / "zarr.json").exists():
        return "a zarr folder, but not a specdyn store; give a store written by `specdyn analyze` (or its run dir)"
    if path.is_dir():
        return f"no specdyn store here; run `specdyn analyze {path}` first"
    if path.exists():
        return "not a specdyn store (a store is a folder); give a run dir or its specdyn.zarr"
    return "no specdyn store here; run `specdyn analyze RUN_DIR` first"
