"""Find the checkpoints of a training run and order them by step (headers and plain values only, no tensors)."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from specdyn.errors import EXIT_NO_CHECKPOINTS, EXIT_NOT_FOUND, SpecdynError
from specdyn.io import registry
from specdyn.io.base import IN_PROGRESS, Checkpoint, StepRangeError, natural_key
from specdyn.io.hf import FINAL_MODEL
from specdyn.io.hub import hub_series

# Files next to checkpoints that are not model weights (HF Trainer, accelerate, DeepSpeed, open_lth).
_NOT_WEIGHTS = re.compile(
    r"(optimizer|scheduler|lr_scheduler|scaler|rng_state|random_states|training_args|mask)"
    r"(_\d+)?|.*optim_states"
)
_SHARD = re.compile(r".+-\d+-of-\d+\.(safetensors|bin)")


def discover(run_dir, order: str = "step", repo: str | None = None) -> list[Checkpoint]:
    """All checkpoints of the series in `run_dir`, ordered by training step (order="name": natural sort of
    relative paths, steps filled where known, no step required and equal steps allowed). Checkpoints whose
    step is out of range come last, with `error` set (the caller skips or refuses them).

    Looks at the files directly in `run_dir` and at checkpoint-*/DCP folders directly inside it; reads only
    headers and pickles' plain values to find steps, never tensor data. Ignored: `*.zarr` stores, optimizer/
    scheduler/rng/scaler files, `training_args.bin`, Lightning's `last.ckpt` and `-vN` duplicates, loose PEFT
    `adapter_model.*` files (an adapter checkpoint is a folder with its adapter_config.json, format `peft`), a
    final `model.safetensors` saved next to HF checkpoint folders, and files or folders still being written
    (`*.tmp`, `*.partial`, ...). A `run_dir` that is itself one HF, DCP or adapter folder yields that one
    checkpoint.

    A Hugging Face hub cache (its root with `repo`, a `models--org--name` folder, its snapshots/ or refs/, or one
    snapshot) yields one checkpoint per revision, stepped by the revision's name (see specdyn.io.hub).
    """
    if order not in ("step", "name"):
        raise ValueError(f"order must be 'step' or 'name', not {order!r}")
    root = resolve_path(run_dir)
    if not root.exists():
        raise SpecdynError(f"{root}: no such directory", code=EXIT_NOT_FOUND)
    if not root.is_dir():
        raise SpecdynError(f"{root} is a file; pass the directory that holds the checkpoint series")
    hub = hub_series(root, repo, order)
    if hub is not None:
        return _ordered([c for c in hub if not c.error], order) + [c for c in hub if c.error]
    if repo is not None:
        raise SpecdynError(f"--repo {repo}: {root} is not a Hugging Face hub cache (no models--*/ folders in it)")
    itself = registry.claim_dir(root)
    if itself and itself[0].name == "hf" and any(root.glob("checkpoint-*/")):
        itself = None  # an HF output_dir: its top-level model is the final save, the series is in checkpoint-*
    if itself:
        found, skipped = [(itself[1], itself[0])], []
        root = root.parent
    else:
        found, skipped = _scan(root)
    if not found:
        note = f" (skipped: {'; '.join(skipped)})" if skipped else ""
        raise SpecdynError(
            f"no checkpoints found in {root}{note}; supported layouts: {registry.supported_layouts()}",
            code=EXIT_NO_CHECKPOINTS,
        )
    formats = Counter(fmt.name for _, fmt in found)
    if len(formats) > 1:
        listing = ", ".join(
            f"{n} {name} (e.g. {next(p.name for p, f in found if f.name == name)})" for name, n in formats.most_common()
        )
        raise SpecdynError(f"{root} mixes checkpoint formats: {listing}; pass a directory that holds one series")
    checkpoints = [_checkpoint(path, root, fmt) for path, fmt in found]
    bad = [c for c in checkpoints if c.error]
    return _ordered([c for c in checkpoints if not c.error], order) + bad


def checkpoint_files(ckpt: Checkpoint) -> list[Path]:
    """The files a checkpoint consists of: the file itself, or every file inside its folder."""
    p = ckpt.path
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    return [p]


def fingerprint(ckpt: Checkpoint) -> tuple[int, int]:
    """(total bytes, latest mtime in ns) of a checkpoint's files: a changed file changes it."""
    size = mtime = 0
    for f in checkpoint_files(ckpt):
        st = f.stat()
        size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    return size, mtime


def still_written(ckpt: Checkpoint, settle: float, now: float | None = None) -> str | None:
    """Why a checkpoint looks like it is still being written, else None: a file modified less than `settle`
    seconds ago, or a safetensors file shorter or longer than its header says."""
    from specdyn.io.safetensors_file import expected_size

    now = time.time() if now is None else now
    try:
        files = checkpoint_files(ckpt)
        for f in files:
            st = f.stat()
            if now - st.st_mtime < settle:
                return f"{f.name} was modified {max(now - st.st_mtime, 0):.1f} s ago"
            if f.suffix == ".safetensors":
                want = expected_size(f)
                if want != st.st_size:
                    have = "unreadable header" if want is None else f"{want} bytes by its header"
                    return f"{f.name} holds {st.st_size} bytes ({have})"
    except OSError as e:
        return f"it cannot be read yet ({e.strerror})"
    return None


def resolve_path(path) -> Path:
    """An absolute path with symlinks resolved; a symlink loop is a one-line error, not a RuntimeError."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:
        raise SpecdynError(f"{path}: cannot be resolved ({e}); is it a symlink loop?") from None


def _checkpoint(path: Path, root: Path, fmt) -> Checkpoint:
    """A found checkpoint with its step, or with the reason it cannot join the series (an out-of-range step):
    the caller skips it (or refuses, under --strict) like an unreadable file, not the whole series."""
    try:
        return Checkpoint(path, root, find_step(path, fmt, root), fmt.name)
    except StepRangeError as e:
        return Checkpoint(path, root, None, fmt.name, error=f"{path}: {e.message}")


def open_checkpoint(path) -> Checkpoint:
    """A single checkpoint given by its own path (a file, or an HF/DCP folder); its run_dir is its parent.

    The step is filled where the file or name states it, else None.
    """
    p = resolve_path(path)
    if not p.exists():
        raise SpecdynError(f"{p}: no such file or directory", code=EXIT_NOT_FOUND)
    kind = registry.claim_dir(p) if p.is_dir() else registry.claim_file(p)
    if kind is None:
        raise SpecdynError(
            f"{p} is not a checkpoint specdyn can read; supported layouts: {registry.supported_layouts()}"
        )
    fmt, target = kind
    try:
        return Checkpoint(target, p.parent, find_step(target, fmt, p.parent), fmt.name)
    except StepRangeError as e:
        raise SpecdynError(f"{p}: {e.message}") from None


def find_step(path: Path, fmt, run_dir: Path) -> int | None:
    """The step stored in the checkpoint, else the one its name states. An unreadable file falls back to its
    name: reading it later reports the damage."""
    step = fmt.recorded_step(path, run_dir)
    return step if step is not None else fmt.step_from_name(path)


def _scan(root: Path):
    entries = sorted(root.iterdir())
    names = {e.name for e in entries}
    has_hf_folders = any(e.is_dir() and e.name.startswith("checkpoint-") for e in entries)
    found, skipped = [], []
    for p in entries:
        name = p.name
        if name.startswith(".") or name.endswith((".zarr", *IN_PROGRESS)):
            continue
        if p.is_dir():
            kind = registry.claim_dir(p, inside_series=True)
            if kind:
                found.append((kind[1], kind[0]))
            elif name.startswith("checkpoint-"):
                adapter = any(p.glob("adapter_model.*"))
                note = " (PEFT adapters need their adapter_config.json beside the weights)" if adapter else ""
                skipped.append(f"{name}/ has no model weights{note}")
            continue
        kind = registry.claim_file(p)
        if kind is None:
            continue
        stem = name.rsplit(".", 1)[0]
        if _SHARD.fullmatch(name) or stem.startswith("adapter_model") or _NOT_WEIGHTS.fullmatch(stem):
            continue
        if has_hf_folders and name in FINAL_MODEL:
            continue  # the final model HF Trainer.save_model writes next to the checkpoint folders
        reason = kind[0].skip_reason(p, names)
        if reason:
            skipped.append(reason)
            continue
        found.append((kind[1], kind[0]))
    return found, skipped


def _ordered(checkpoints: list[Checkpoint], order: str) -> list[Checkpoint]:
    if order == "name":
        return sorted(checkpoints, key=lambda c: natural_key(c.name))
    for c in checkpoints:
        if c.step is None:
            raise SpecdynError(
                f"{c.path}: no training step found in the file or its name; rename it "
                "(e.g. step_100.safetensors) or pass --order name to order by name"
            )
    checkpoints = sorted(checkpoints, key=lambda c: (c.step, natural_key(c.name)))
    for a, b in zip(checkpoints, checkpoints[1:], strict=False):
        if a.step == b.step:
            raise SpecdynError(
                f"{a.path} and {b.path} both hold step {a.step}; remove one, pass a narrower "
                "directory, or pass --order name"
            )
    return checkpoints


def number_by_name(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Under --order name, a checkpoint without a step takes its index as its step."""
    return [c if c.step is not None else replace(c, step=i) for i, c in enumerate(checkpoints)]
