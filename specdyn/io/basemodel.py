"""The base model a series is compared with (`specdyn analyze --base`): a model folder, a checkpoint file, a hub
cache repo folder at a revision, or, for an adapter series without --base, its `base_model_name_or_path` found in
the local hub cache (never downloaded: `specdyn fetch` does that)."""

from __future__ import annotations

import os
from pathlib import Path

from specdyn.errors import EXIT_NOT_FOUND, SpecdynError
from specdyn.io import registry
from specdyn.io.adapters import CONFIG, read_config
from specdyn.io.base import Checkpoint, is_hash
from specdyn.io.discovery import resolve_path
from specdyn.io.hub import is_repo_folder, read_refs, repo_folder_name, repo_id

HOW = "pass --base PATH (a model folder, a checkpoint file, or a hub cache models--org--name folder)"


def hub_cache() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), found
    without importing it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_base(path, revision: str | None = None) -> Checkpoint:
    """The base checkpoint `--base PATH` names (with `--base-revision` for a hub cache repo folder)."""
    p = resolve_path(path)
    if not p.exists():
        raise SpecdynError(f"--base {path}: no such file or folder; {HOW}", code=EXIT_NOT_FOUND)
    if p.is_dir() and is_repo_folder(p):
        return _revision(p, revision or "main")
    if revision is not None:
        raise SpecdynError(f"--base-revision {revision}: --base {path} is not a hub cache models--org--name folder")
    kind = registry.claim_dir(p) if p.is_dir() else registry.claim_file(p)
    if kind is None:
        raise SpecdynError(f"--base {p}: not a model specdyn can read; {HOW}")
    fmt, target = kind
    if fmt.name == "peft":
        raise SpecdynError(f"--base {p}: a PEFT adapter, not a model; pass the model it adapts")
    return Checkpoint(target, p.parent, None, fmt.name)


def _revision(folder: Path, revision: str) -> Checkpoint:
    refs = read_refs(folder)
    commit = refs.get(revision) or (revision if is_hash(revision) else None)
    snapshot = folder / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        held = ", ".join(sorted(refs)) or "none"
        raise SpecdynError(
            f"{folder}: no revision {revision!r} in this hub cache (revisions: {held}); pass --base-revision, or "
            f"`specdyn fetch {repo_id(folder)} --revisions {revision}`",
            code=EXIT_NOT_FOUND,
        )
    kind = registry.claim_dir(snapshot)
    if kind is None:
        raise SpecdynError(f"{snapshot}: revision {revision} of {repo_id(folder)} holds no model weights")
    return Checkpoint(kind[1], folder, None, kind[0].name, revision=revision, repo=repo_id(folder))


def base_of_adapter(adapter: Path, revision: str | None = None) -> Checkpoint:
    """The base an adapter's config names, in the local hub cache only; one line saying how to pass it when absent."""
    config = read_config(adapter)
    name = config.base
    if not name:
        raise SpecdynError(f"{adapter / CONFIG}: names no base model (base_model_name_or_path); {HOW}")
    cache = hub_cache()
    folder = cache / repo_folder_name(name)
    if name.count("/") != 1 or not is_repo_folder(folder):
        raise SpecdynError(
            f"{adapter / CONFIG}: its base model {name!r} is not in the local hub cache ({cache}); {HOW}"
            + (f", or download it with `specdyn fetch {name}`" if name.count("/") == 1 else "")
        )
    return _revision(folder, revision or config.revision or "main")
