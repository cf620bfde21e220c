"""What every checkpoint format provides, and the name and step helpers they share.

A format (one module each, listed in `specdyn.io.registry.FORMATS`) says which files or folders are its
checkpoints, finds the training step a checkpoint records, opens it as a `TensorSource` (tensors one at a time),
and optionally writes one (`specdyn train --format NAME`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from specdyn.errors import CheckpointError, SpecdynError
from specdyn.files import atomic_write, name_text
from specdyn.io.safeload import unreadable

if TYPE_CHECKING:  # annotations only: torch is imported where tensors are read
    import torch

STEP_KEYS = ("global_step", "step", "iter_num", "iteration")  # where training scripts store the step
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module")  # where they nest the weights
MAX_STEP = 2**63 - 1  # steps are stored as int64
IN_PROGRESS = (".tmp", ".part", ".partial", ".incomplete", ".lock")  # writers' staging names


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series: where it is, which run it belongs to, its training step and format."""

    path: Path  # the checkpoint file or folder, absolute
    run_dir: Path  # the run directory it belongs to, absolute
    step: int | None  # None only under order="name" (or from open_checkpoint) when no step is found
    format: str  # a key of specdyn.io.registry.FORMATS
    revision: str | None = None  # a hub revision (`step1000`) where the series came from a hub cache
    repo: str | None = None  # the hub repo id (`EleutherAI/pythia-70m`) of such a series
    error: str | None = None  # why this checkpoint cannot be part of the series (found, but e.g. its step is bad)
    base: Checkpoint | None = None  # the base model a PEFT adapter is read on (its effective weights)

    @property
    def relpath(self) -> str:
        """The path under the run dir as UTF-8 text (a name that is not UTF-8 keeps its bytes as `\\xHH`:
        specdyn.files.name_text), as the store records it."""
        return name_text(self.path.relative_to(self.run_dir).as_posix())

    @property
    def name(self) -> str:
        """What `--order name` sorts by: the revision where there is one (a snapshot's folder is a hash)."""
        return self.revision or self.relpath


@dataclass(frozen=True)
class Saved:
    """A checkpoint to write: the weights, the step, and what `specdyn train` records with them."""

    state_dict: dict[str, torch.Tensor]
    step: int
    task: str
    config: dict[str, Any]
    epoch: int = 0
    history: list[dict] | None = None


class TensorSource(Protocol):
    """An open checkpoint: raw tensor keys, shapes and dtypes from headers, one tensor at a time."""

    ordered: bool  # keys() are in registration (depth) order; else param_order() or a natural sort decides

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> torch.dtype: ...
    def tensor(self, key: str) -> torch.Tensor: ...
    def metadata(self) -> dict: ...
    def param_order(self) -> list[str]: ...
    def close(self) -> None: ...


class CheckpointFormat:
    """Base of the formats: the defaults say "not mine", "no step recorded" and "cannot write"."""

    name: ClassVar[str]
    describe: ClassVar[str]  # for "supported layouts" messages

    def claim_file(self, path: Path) -> Path | None:
        """The checkpoint this file is, if it is one of this format."""
        return None

    def claim_dir(self, path: Path, inside_series: bool) -> Path | None:
        """The checkpoint this folder is (the folder, or a folder inside it). `inside_series`: the folder was
        found inside a run dir (then only conventionally named checkpoint folders count)."""
        return None

    def skip_reason(self, path: Path, siblings: set[str]) -> str | None:
        """Why a claimed file in a run dir is not a checkpoint of the series ("" to ignore silently)."""
        return None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        """The step stored in the checkpoint itself (headers and plain values only), else None."""
        return None

    def step_from_name(self, path: Path) -> int | None:
        return step_from_name(path.name)

    def open(self, path: Path, trust_pickle: bool) -> TensorSource:
        raise NotImplementedError

    def metadata(self, path: Path, source: TensorSource) -> dict:
        """Plain-data metadata of an opened checkpoint (JSON-like)."""
        return source.metadata()

    # Writing (formats `specdyn train` can save in).
    writable: ClassVar[bool] = False
    writes_folder: ClassVar[bool] = False  # a checkpoint is a folder (written beside, then swapped in whole)

    def checkpoint_name(self, step: int, epoch: int = 0) -> str:
        raise NotImplementedError(f"specdyn cannot write {self.name} checkpoints")

    def write(self, path: Path, ckpt: Saved) -> None:
        """Write `ckpt` at `path` (the caller writes to a temporary name and renames it into place: an empty file,
        or an empty folder where `writes_folder`)."""
        raise NotImplementedError(f"specdyn cannot write {self.name} checkpoints")


# --- names and steps ---------------------------------------------------------------------------------------


def natural_key(name: str) -> tuple:
    """Sort key treating digit runs as numbers: "layers.2" < "layers.10"."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def strip_prefixes(name: str) -> str:
    """Drop the wrappers DDP (`module.`) and torch.compile (`_orig_mod.`) add to parameter names.

    `_orig_mod.` is also removed inside a name (a compiled submodule of a LightningModule); `module.` only in front,
    since inside a name it can be a real attribute.
    """
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    while "._orig_mod." in name:
        name = name.replace("._orig_mod.", ".")
    return name


_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


_EXPLICIT = re.compile(r"(?:step|iter|iteration)[_=-]?(\d+)", re.I)
_HASH = re.compile(r"[0-9a-f]{7,}", re.I)


def is_hash(part: str) -> bool:
    """Whether a name (or one `-`/`_`/`.` separated part of it) is a hexadecimal hash: a commit (40 hex digits, 64
    for sha256) or any run of 7+ hex digits holding a letter. Digits inside a hash are not a step."""
    return bool(_HASH.fullmatch(part)) and (len(part) in (40, 64) or not part.isdigit())


def step_from_name(name: str, explicit_only: bool = False) -> int | None:
    """The step a file or folder name states: `step_100`, `step=100`, `global_step100`, `iter_5`, else (unless
    `explicit_only`) the last integer in the stem (`checkpoint-500`, `ckpt_2000.pt`).

    Never a step from a hexadecimal hash (a hub snapshot's `snapshots/<commit>/` folder, `model-3fa9c0e`): such
    parts of a name are ignored, so a hash alone gives None.
    """
    stem = name
    for suffix in _SUFFIXES:
        stem = stem.removesuffix(suffix)
    parts = [p for p in re.split(r"[-_.=/]", stem) if p and not is_hash(p)]
    stem = "-".join(parts)
    found = _EXPLICIT.findall(stem)
    if found:
        return _in_range(int(found[-1]), "name")
    if explicit_only:
        return None
    numbers = re.findall(r"\d+", stem)
    return _in_range(int(numbers[-1]), "name") if numbers else None


class StepRangeError(CheckpointError):
    """A step too large to be a training step (beyond int64): the checkpoint is skipped, or refused (--strict)."""


def _in_range(step: int, where: str) -> int:
    if step > MAX_STEP:
        raise StepRangeError(f"the step in its {where}, {step}, is out of range (at most {MAX_STEP})")
    return step


@contextlib.contextmanager
def best_effort():
    """For reading a step from a file that may be damaged: any failure falls back quietly (reading it later
    reports the damage), except a step that is out of range."""
    try:
        yield
    except StepRangeError:
        raise
    except Exception:
        pass


_REVISION_STEP = re.compile(r"(?:global_)?(?:step|iteration|iter)_?(\d+)", re.I)  # one `-`/`/` part of a name
_STEP_WORD = re.compile(r"(?:global_)?(?:step|iteration|iter)(?![a-z])", re.I)  # a part that means to be one


def parse_revision(revision: str) -> tuple[int | None, str | None]:
    """(step, None) for a hub revision (branch or tag) naming a step: Pythia `step1000`, OLMo `step1000-tokens4B`
    (or `stage1-step1000-tokens4B`), `global_step1000`, `iter_0001000`, `checkpoint-1000`, or a bare number.
    (None, None) for a name stating no step (`main`, `v1.0`): no step is guessed. (None, why) for a name that
    looks like a step but is not `step<digits>` (`step1e9`, `step-1`) or is out of range: it is refused."""
    found = None
    for part in re.split(r"[-/]", revision):
        m = _REVISION_STEP.fullmatch(part)
        if m:
            found = m[1]
        elif _STEP_WORD.match(part):
            return None, f"revision {revision!r} is not a step name ({part!r}: a step is step<digits>, e.g. step1000)"
    if found is None:
        m = re.fullmatch(r"(?:checkpoint|ckpt)[-_]?(\d+)|(\d+)", revision, re.I)
        if not m or is_hash(revision):
            return None, None
        found = m[1] or m[2]
    if len(found.lstrip("0")) > 19 or int(found) > MAX_STEP:
        return None, f"revision {revision!r} names a step out of range (at most {MAX_STEP})"
    return int(found), None


def revision_step(revision: str) -> int | None:
    """The step a hub revision names (`parse_revision`), else None."""
    return parse_revision(revision)[0]


def as_step(value) -> int | None:
    """A step value from metadata (int or digit string), else None; StepRangeError beyond int64."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return _in_range(value, "metadata")
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        return _in_range(int(value), "metadata")
    return None


def step_in(obj) -> int | None:
    """The step under one of STEP_KEYS of a mapping, else None."""
    if isinstance(obj, Mapping):
        for key in STEP_KEYS:
            step = as_step(obj.get(key))
            if step is not None:
                return step
    return None


# --- shared reading helpers ----------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """A JSON object from a file; {} when missing, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees a half-written file; a link at `path` is refused)."""
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def parse_json(value: str):
    """A metadata string parsed as JSON where it is JSON, else the string itself."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


@contextlib.contextmanager
def reading(path, what: str = "checkpoint"):
    """Turn any failure while reading `path` into a CheckpointError naming it."""
    try:
        yield
    except SpecdynError:
        raise
    except Exception as e:
        raise unreadable(path, e, what) from e
