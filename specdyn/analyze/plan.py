"""Planning a run: which checkpoints become which rows, and the checks that keep one store one architecture
analyzed with one set of options."""

import os
from dataclasses import dataclass
from pathlib import Path

from specdyn import console
from specdyn.analyze.options import AnalyzeOptions
from specdyn.arch import describe
from specdyn.errors import EXIT_NO_CHECKPOINTS, SpecdynError
from specdyn.io import Checkpoint, CheckpointError, CheckpointReader, discover, number_by_name
from specdyn.io.runmeta import recorded_task
from specdyn.selection import subsample
from specdyn.spectral.matrices import MatrixSpec, matches, select_matrices
from specdyn.spectral.pairs import read_pairs_file
from specdyn.store import is_store
from specdyn.store.layout import pairs_of, read_attrs, specs_of
from specdyn.store.writing import open_root, stored_rows


@dataclass
class Plan:
    """What a run will do: the store's rows in their final order (done ones with their old "row", new ones with
    their "ckpt"), the matrices and pairs, and the checkpoints skipped as unreadable."""

    existing: bool
    attrs: dict
    sources: list[str]
    specs: list[MatrixSpec]
    pairs: list
    heads: int | None
    rows: list[dict]
    skipped: list[dict]
    structure: dict  # specdyn.arch.Structure.attrs() of a new store; {} for an existing one

    @property
    def in_place(self) -> bool:
        """Whether new rows only extend the series (else the store is rebuilt in the new order)."""
        return all(r["row"] == i for i, r in enumerate(self.rows) if r["done"])


def plan(store: Path, run_dirs: list[Path], opts: AnalyzeOptions) -> Plan:
    """The rows of `store` after this run: the ones it holds and the checkpoints newly selected, by step."""
    existing = is_store(store)
    attrs = read_attrs(open_root(store)) if existing else {}
    if existing:
        _check_options(store, attrs, opts)
    discovered = []
    for run_dir in run_dirs:
        ckpts = discover(run_dir, order=opts.order, repo=opts.repo)
        discovered += number_by_name(ckpts) if opts.order == "name" else ckpts
    # a checkpoint's source is the run dir it is relative to (a hub repo folder, the parent of a single folder)
    roots = list(dict.fromkeys(c.run_dir for c in discovered))
    sources = _sources(store, roots, attrs)
    found = [(sources.index(_rel(store, c.run_dir)), c) for c in discovered]
    by_step = sorted(found, key=lambda sc: sc[1].step)
    selected = subsample(by_step, opts.every, opts.log_spaced, opts.steps, key=lambda sc: sc[1].step)
    _check_duplicate_steps([c for _, c in selected])

    stored = stored_rows(open_root(store)) if existing else []
    stored_done = {(r["source"], r["checkpoint"]) for r in stored if r["done"]}
    new = [(src, c) for src, c in selected if (src, c.relpath) not in stored_done]
    specs, pairs, heads, valid, skipped, structure = _validate(store, new, attrs, opts, existing)
    rows = [r for r in stored if r["done"]]
    rows += [{"source": src, "checkpoint": c.relpath, "step": c.step, "done": False, "ckpt": c} for src, c in valid]
    rows.sort(key=lambda r: (r["step"], r["source"], r["checkpoint"]))
    return Plan(existing, attrs, sources, specs, pairs, heads, rows, skipped, structure)


def _rel(store: Path, run_dir: Path) -> str:
    """Run dirs are recorded relative to the store's parent, so a run folder can move with its store."""
    return os.path.relpath(run_dir, store.resolve().parent)


def _sources(store: Path, run_dirs: list[Path], attrs: dict) -> list[str]:
    sources = [s["run_dir"] for s in attrs.get("sources", [])]
    for d in run_dirs:
        if _rel(store, d) not in sources:
            sources.append(_rel(store, d))
    return sources


def _check_duplicate_steps(ckpts: list[Checkpoint]) -> None:
    seen = {}
    for c in ckpts:
        if c.step in seen:
            raise SpecdynError(
                f"{c.path}: step {c.step} also belongs to {seen[c.step].path}; a series needs one checkpoint per step "
                "(analyze the run dirs into separate stores, or narrow the selection with --steps)"
            )
        seen[c.step] = c


def _check_options(store: Path, attrs: dict, opts: AnalyzeOptions) -> None:
    before = attrs.get("options", {})
    now = opts.content_options()
    diff = [k for k in now if k in before and before[k] != now[k]]
    # --pairs and --heads may be left out on a rerun (the store keeps them), but not changed
    given = {"pairs_file": opts.pairs_file, "heads": opts.heads}
    diff += [k for k, v in given.items() if v is not None and attrs.get(k) != v]
    before = {**before, **{k: attrs.get(k) for k in given}}
    now = {**now, **given}
    if diff:
        k = diff[0]
        raise SpecdynError(
            f"{store}: made with --{k.replace('_file', '').replace('_', '-')} {before[k]!r}, now {now[k]!r}; "
            "use the same options, a new --out, or --overwrite"
        )


def _shapes(reader: CheckpointReader) -> dict[str, tuple[int, ...]]:
    return {name: tuple(reader.shape(name)) for name in reader.names()}


def _describe(reader: CheckpointReader, c: Checkpoint, opts: AnalyzeOptions):
    """The first checkpoint's structure (specdyn.arch): matrices, kinds, orientation, tied aliases, heads, pairs."""
    meta = reader.metadata() or {}
    task, _ = recorded_task(meta, c.run_dir)
    structure = describe(_shapes(reader), meta, task if isinstance(task, str) else None, reader.ordered, opts.heads)
    if structure.warning:
        console.warn(f"{c.path}: {structure.warning}")
    if structure.broken:
        console.warn(
            f"{c.path}: {len(structure.broken)} links of the {structure.family} architecture do not chain by shape "
            f"and are not paired (e.g. {structure.broken[0]})"
        )
    specs = select_matrices({}, opts.include, opts.exclude, where=str(c.path), specs=structure.specs)
    if opts.pairs_file:
        pairs = read_pairs_file(opts.pairs_file, specs, structure.heads, structure.tied)
    else:
        pairs = structure.pairs_for(specs)
    return specs, pairs, structure


def _validate(store, new, attrs, opts, existing):
    """Open every new checkpoint's header: skip unreadable ones, and refuse a change of architecture."""
    skipped, valid = [], []
    specs = pairs = heads = None
    structure = {}
    ignored = set(attrs.get("tied") or {}) | set(attrs.get("refused") or {})
    if existing:
        root = open_root(store)
        specs, pairs = specs_of(root), pairs_of(root)
        heads = attrs.get("heads")
    for src, c in new:
        try:
            with CheckpointReader(c, trust_pickle=opts.trust_pickle) as reader:
                if specs is None:
                    specs, pairs, described = _describe(reader, c, opts)
                    heads, structure = described.heads, described.attrs()
                    ignored = described.ignored()
                shapes = _shapes(reader)
        except CheckpointError as e:
            if opts.strict:
                raise
            console.warn(f"skipping {e.message}")
            skipped.append({"source": src, "checkpoint": c.relpath, "reason": e.message})
            continue
        _check_architecture(specs, shapes, ignored, opts, c)
        valid.append((src, c))
    if specs is None:
        raise SpecdynError(
            f"{store}: no readable checkpoint to analyze"
            + (f" ({len(skipped)} skipped, see the warnings above)" if skipped else ""),
            code=EXIT_NO_CHECKPOINTS,
        )
    return specs, pairs, heads, valid, skipped, structure


def _check_architecture(reference: list[MatrixSpec], shapes: dict, ignored: set, opts, c: Checkpoint) -> None:
    ref = {s.name: s.original_shape for s in reference}
    now = {
        n: tuple(s)
        for n, s in shapes.items()
        if len(s) >= 2 and 0 not in s and n not in ignored and matches(n, opts.include, opts.exclude)
    }
    for name, shape in ref.items():
        if name not in now:
            raise SpecdynError(
                f"{c.path}: architecture change: tensor {name!r} {list(shape)} is missing in this checkpoint"
            )
        if now[name] != shape:
            raise SpecdynError(
                f"{c.path}: architecture change: tensor {name!r} has shape {list(now[name])}, earlier checkpoints {list(shape)}"
            )
    extra = [n for n in now if n not in ref]
    if extra:
        raise SpecdynError(f"{c.path}: architecture change: new tensor {extra[0]!r} not in earlier checkpoints")
