"""Planning a run: which checkpoints become which rows, and the checks that keep one store one architecture
analyzed with one set of options."""

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from specdyn import console
from specdyn.analyze.options import AnalyzeOptions
from specdyn.arch import describe
from specdyn.errors import EXIT_NO_CHECKPOINTS, SpecdynError
from specdyn.io import Checkpoint, CheckpointError, CheckpointReader, discover, number_by_name
from specdyn.io.basemodel import base_of_adapter, resolve_base
from specdyn.io.discovery import fingerprint, still_written
from specdyn.io.runmeta import recorded_task
from specdyn.selection import subsample
from specdyn.spectral.matrices import MatrixSpec, matches, select_matrices
from specdyn.spectral.pairs import read_pairs_file
from specdyn.store.handle import Store

_noted_waiting: set[str] = set()  # checkpoints already reported as still being written (one line each, --watch)


class NothingReady(SpecdynError):
    """Every checkpoint found is still being written (--watch waits for the next poll)."""


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
    skipped_tensors: list[dict]  # ndim >= 2 tensors that are not floating point: {"name", "dtype", "shape"}
    base: Checkpoint | None = None  # the base model the base-relative arrays compare with
    base_doc: dict | None = None  # what the store records of it (attrs `base`)

    @property
    def in_place(self) -> bool:
        """Whether new rows only extend the series (else the store is rebuilt in the new order)."""
        return all(r["row"] == i for i, r in enumerate(self.rows) if r["done"])


def plan(st: Store, run_dirs: list[Path], opts: AnalyzeOptions) -> Plan:
    """The rows of the store after this run: the ones it holds and the checkpoints newly selected, by step."""
    store = st.path
    existing = st.is_specdyn
    attrs = st.attrs
    if existing:
        _check_options(store, attrs, opts)
    discovered, bad = [], []
    for run_dir in run_dirs:
        ckpts = discover(run_dir, order=opts.order, repo=opts.repo)
        bad += [c for c in ckpts if c.error]  # found, but unusable before reading (an out-of-range step)
        ckpts = [c for c in ckpts if not c.error]
        discovered += number_by_name(ckpts) if opts.order == "name" else ckpts
    base, base_doc = _base(store, attrs, discovered, opts)
    if base is not None:  # adapters are read on their base: their effective weights
        discovered = [replace(c, base=base) if c.format == "peft" else c for c in discovered]
    # a checkpoint's source is the run dir it is relative to (a hub repo folder, the parent of a single folder)
    roots = list(dict.fromkeys(c.run_dir for c in discovered + bad))
    sources = _sources(store, roots, attrs)
    found = [(sources.index(_rel(store, c.run_dir)), c) for c in discovered]
    skipped = _unusable([(sources.index(_rel(store, c.run_dir)), c) for c in bad], opts)
    by_step = sorted(found, key=lambda sc: sc[1].step)
    selected = subsample(by_step, opts.every, opts.log_spaced, opts.steps, key=lambda sc: sc[1].step)
    _check_duplicate_steps([c for _, c in selected])

    stored = st.rows()
    stored = _changed_since(stored, {(src, c.relpath): c for src, c in found}, opts.settle or 0)
    again = [(r["source"], r.pop("ckpt")) for r in stored if r.get("changed")]
    stored_done = {(r["source"], r["checkpoint"]) for r in stored if r["done"] or r.get("changed")}
    new = [(src, c) for src, c in selected if (src, c.relpath) not in stored_done]
    waiting = [(src, c) for src, c in new if _waiting(c, opts)]
    new = [sc for sc in new if sc not in waiting]
    if waiting and not new and not again and not existing:
        raise NothingReady(f"{store}: no checkpoint is ready yet ({len(waiting)} still being written)")
    specs, pairs, heads, valid, failed, structure, other = _validate(st, again + new, attrs, opts)
    skipped += failed
    rows = [r for r in stored if r["done"]]
    rows += [
        {"source": src, "checkpoint": c.relpath, "step": c.step, "done": False, "ckpt": c, "fingerprint": fp}
        for src, c, fp in valid
    ]
    rows.sort(key=lambda r: (r["step"], r["source"], r["checkpoint"]))
    _check_topk(specs, opts)
    if base is not None and not any(c.format == "peft" for c in discovered):
        _check_base(base, specs, opts)
    return Plan(existing, attrs, sources, specs, pairs, heads, rows, skipped, structure, other, base, base_doc)


def _base(store: Path, attrs: dict, discovered: list[Checkpoint], opts: AnalyzeOptions):
    """(the base checkpoint, its store record) from --base, the store's record, or an adapter's config; (None,
    None) for a series without one. A store keeps the base it was made with."""
    adapters = [c for c in discovered if c.format == "peft"]
    stored = attrs.get("base")
    if opts.base == "first":
        if adapters:
            raise SpecdynError(
                f"--base first: {adapters[0].run_dir} is a PEFT adapter series; its base is the model the adapters "
                "adapt: pass --base PATH"
            )
        if not discovered:
            return None, None
        base = min(discovered, key=lambda c: (c.step is None, c.step or 0))
    elif opts.base is not None:
        base = resolve_base(opts.base, opts.base_revision)
    elif stored:
        base = Checkpoint(Path(stored["path"]), Path(stored["path"]).parent, None, stored["format"],
                          stored.get("revision"), stored.get("repo"))  # fmt: skip
        if not base.path.exists():
            raise SpecdynError(f"{store}: its base model {base.path} is gone; pass --base PATH (the same model)")
        opts = opts.replace(intruder_epsilon=stored["epsilon"], intruder_topk=stored["intruder_topk"])
    elif adapters:
        base = base_of_adapter(adapters[0].path, opts.base_revision)
    else:
        return None, None
    doc = {"path": str(base.path), "format": base.format, "revision": base.revision, "repo": base.repo,
           **opts.base_doc()}  # fmt: skip
    if attrs:  # an existing store: one base, one set of intruder options
        if not stored:
            raise SpecdynError(
                f"{store}: made without a base model; analyze into a new --out, or rerun with --overwrite"
            )
        if stored != doc:
            what = next(k for k in doc if stored.get(k) != doc[k])
            raise SpecdynError(
                f"{store}: made with base {stored['path']} ({what} {stored.get(what)!r}), now {doc[what]!r}; use the "
                "same base and intruder options, a new --out, or --overwrite"
            )
    return base, doc


def _check_base(base: Checkpoint, specs: list[MatrixSpec], opts: AnalyzeOptions) -> None:
    """A full fine-tune's base must hold every analyzed matrix with the same shape."""
    with CheckpointReader(base, trust_pickle=opts.trust_pickle) as reader:
        shapes = {n: tuple(reader.shape(n)) for n in reader.names()}
    for spec in specs:
        have = shapes.get(spec.name)
        if have != tuple(spec.original_shape):
            found = "has no such tensor" if have is None else f"holds it as {list(have)}"
            raise SpecdynError(
                f"--base {base.path}: the series' {spec.name!r} is {list(spec.original_shape)}, the base {found}; "
                "pass the model this run started from"
            )


def _unusable(bad: list, opts: AnalyzeOptions) -> list[dict]:
    """Checkpoints found but unusable before reading (an out-of-range step): skipped, or refused (--strict)."""
    out = []
    for src, c in bad:
        if opts.strict:
            raise CheckpointError(c.error)
        console.warn(f"skipping {c.error}", kind="skipped")
        out.append({"source": src, "checkpoint": c.relpath, "reason": c.error})
    return out


def _waiting(c: Checkpoint, opts: AnalyzeOptions) -> bool:
    """With a settle time (--watch), whether a checkpoint is still being written: it is read on a later poll."""
    if not opts.settle:
        return False
    why = still_written(c, opts.settle)
    if why and str(c.path) not in _noted_waiting:
        _noted_waiting.add(str(c.path))
        console.info(f"waiting for {c.path}: still being written? ({why})")
    return why is not None


def _changed_since(stored: list[dict], found: dict, settle: float) -> list[dict]:
    """Done rows whose checkpoint file changed since it was read (a size or mtime other than recorded) are marked
    `changed`, with the checkpoint to read again: a file read while still being written is recomputed."""
    out = []
    for r in stored:
        c = found.get((r["source"], r["checkpoint"]))
        known = r.get("file_bytes", -1) >= 0 and r.get("file_mtime_ns", -1) >= 0
        if r["done"] and c is not None and known:
            try:
                now = fingerprint(c)
            except OSError:
                now = None
            if now is not None and now != (r["file_bytes"], r["file_mtime_ns"]):
                if settle and still_written(c, settle):
                    out.append(r)  # keep the old row until the new version is whole
                    continue
                console.warn(
                    f"{c.path}: changed since it was analyzed ({r['file_bytes']} -> {now[0]} bytes, new mtime); "
                    "recomputing its row",
                    kind="changed",
                )
                r = {**r, "done": False, "changed": True, "ckpt": c}
        out.append(r)
    return out


def _check_topk(specs: list[MatrixSpec], opts: AnalyzeOptions) -> None:
    """--topk is clipped to each matrix's k; a value above every matrix's k (and the default) is a mistake that
    would allocate NaN padding for nothing (10^9 took 111 s to fail)."""
    from specdyn.analyze.options import DEFAULT_TOPK

    largest = max(s.k for s in specs)
    if opts.topk > max(largest, DEFAULT_TOPK):
        raise SpecdynError(
            f"--topk {opts.topk}: the largest matrix of this series has rank {largest}; use at most "
            f"{max(largest, DEFAULT_TOPK)} (vectors are clipped to each matrix's rank anyway)"
        )


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


FLAGS = {"top": "topk"}  # content option -> its flag, where the names differ


def _check_options(store: Path, attrs: dict, opts: AnalyzeOptions) -> None:
    before = attrs.get("options", {})
    now = opts.content_options()
    diff = [k for k in now if k in before and before[k] != now[k]]
    # --alignment-pairs and --heads may be left out on a rerun (the store keeps them), but not changed
    given = {"pairs_file": opts.pairs_file, "heads": opts.heads}
    diff += [k for k, v in given.items() if v is not None and attrs.get(k) != v]
    before = {**before, **{k: attrs.get(k) for k in given}}
    now = {**now, **given}
    if diff:
        k = diff[0]
        raise SpecdynError(
            f"{store}: made with --{FLAGS.get(k, k).replace('_file', '').replace('_', '-')} {before[k]!r}, now "
            f"{now[k]!r}; "
            "use the same options, a new --out, or --overwrite"
        )


def _shapes(reader: CheckpointReader) -> dict[str, tuple[int, ...]]:
    """The shapes of the floating-point tensors, the only ones analyzed: an int, bool or complex tensor is not a
    weight matrix (and a complex one would lose its imaginary part)."""
    return {name: tuple(reader.shape(name)) for name in reader.names() if reader.is_float(name)}


def _not_float(reader: CheckpointReader) -> list[dict]:
    """The ndim >= 2 tensors left out for their dtype, recorded in the store's `skipped_tensors`."""
    out = []
    for name in reader.names():
        shape = list(reader.shape(name))
        if not reader.is_float(name) and len(shape) >= 2:
            out.append({"name": name, "dtype": reader.dtype_name(name), "shape": shape})
    return out


def _describe(reader: CheckpointReader, c: Checkpoint, opts: AnalyzeOptions):
    """The first checkpoint's structure (specdyn.arch): matrices, kinds, orientation, tied aliases, heads, pairs."""
    meta = reader.metadata() or {}
    task, _ = recorded_task(meta, c.run_dir)
    from specdyn.tasks import TASKS

    task = task if isinstance(task, str) else None
    own = task is not None and task in set(TASKS)  # a built-in task of `specdyn train`: specdyn defines its model
    structure = describe(_shapes(reader), meta, task, reader.ordered, opts.heads, own, reader.aliases())
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
    if opts.topk == 0:  # values only: no vectors, so no alignment pairs
        pairs = []
    return specs, pairs, structure


def _validate(st: Store, new, attrs, opts):
    """Open every new checkpoint's header: skip unreadable ones, and refuse a change of architecture."""
    skipped, valid = [], []
    specs = pairs = heads = None
    structure = {}
    other = list(attrs.get("skipped_tensors", []))
    ignored = set(attrs.get("tied") or {}) | set(attrs.get("refused") or {})
    if st.is_specdyn:
        specs, pairs = st.specs(), st.pairs()
        heads = attrs.get("heads")
    for src, c in new:
        try:
            fp = fingerprint(c)
            with CheckpointReader(c, trust_pickle=opts.trust_pickle) as reader:
                if specs is None:
                    specs, pairs, described = _describe(reader, c, opts)
                    heads, structure = described.heads, described.attrs()
                    ignored = described.ignored()
                    other = _not_float(reader)
                shapes = _shapes(reader)
        except (CheckpointError, OSError) as e:
            if isinstance(e, OSError):  # vanished or unreadable between discovery and now
                e = CheckpointError(f"{c.path}: cannot be read ({e.strerror or e})")
            if opts.strict:
                raise e from None
            console.warn(f"skipping {e.message}", kind="skipped")
            skipped.append({"source": src, "checkpoint": c.relpath, "reason": e.message})
            continue
        _check_architecture(specs, shapes, ignored, opts, c)
        valid.append((src, c, fp))
    if specs is None:
        raise SpecdynError(
            f"{st.path}: no readable checkpoint to analyze"
            + (f" ({len(skipped)} skipped, see the warnings above)" if skipped else ""),
            code=EXIT_NO_CHECKPOINTS,
        )
    return specs, pairs, heads, valid, skipped, structure, other


def _check_architecture(reference: list[MatrixSpec], shapes: dict, ignored: set, opts, c: Checkpoint) -> None:
    ref = {s.name: s.original_shape for s in reference if s.cut is None}
    stacks = {s.cut.tensor: s for s in reference if s.cut is not None}  # experts' stacks: one expert's part each
    now = {
        n: tuple(s)
        for n, s in shapes.items()
        if len(s) >= 2 and 0 not in s and n not in ignored and (n in stacks or matches(n, opts.include, opts.exclude))
    }
    for name, spec in stacks.items():
        shape, cut = now.pop(name, None), spec.cut
        if shape is None:
            raise SpecdynError(f"{c.path}: architecture change: expert stack {name!r} is missing in this checkpoint")
        if shape[0] % cut.experts or np.prod(shape) != np.prod(spec.original_shape) * cut.parts * cut.experts:
            raise SpecdynError(
                f"{c.path}: architecture change: expert stack {name!r} has shape {list(shape)}, not "
                f"{cut.experts} experts of {cut.parts} x {list(spec.original_shape)}"
            )
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
