"""Hugging Face hub caches as a checkpoint series: one checkpoint per revision (`step1000`, ...) in `refs/`.

huggingface_hub's cache (`snapshot_download`, `HF_HOME/hub`) holds one folder per repo::

    models--EleutherAI--pythia-70m/
        refs/step1000            a file holding the commit hash of revision `step1000`
        snapshots/<commit>/      the revision's files: symlinks into blobs/ (relative, `../../blobs/<hash>`)
        blobs/<sha256 or etag>   the file contents, stored once

The step comes from the revision's name (docs/method.md §0 orders a series by step), never from the commit
hash. Pull-request refs (`refs/pr/N`) are not revisions of the series. A revision whose name states no step
(`main`) is an alias when another revision names the same commit, and an error otherwise (unless --order name).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from specdyn.errors import EXIT_NO_CHECKPOINTS, SpecdynError
from specdyn.io.base import Checkpoint, is_hash, parse_revision, revision_step
from specdyn.io.hf import HFFormat, weights_file

REPO_PREFIX = "models--"


def repo_id(folder: Path) -> str:
    """`models--org--name` -> `org/name` (huggingface_hub joins the parts of a repo id with `--`)."""
    return folder.name[len(REPO_PREFIX) :].replace("--", "/")


def repo_folder_name(repo: str) -> str:
    return REPO_PREFIX + repo.replace("/", "--")


def is_repo_folder(path: Path) -> bool:
    return path.name.startswith(REPO_PREFIX) and ((path / "refs").is_dir() or (path / "snapshots").is_dir())


def cached_repos(root: Path) -> list[str]:
    """The model repos a hub cache root holds."""
    return sorted(repo_id(p) for p in root.glob(REPO_PREFIX + "*") if is_repo_folder(p))


def blobs_of(snapshot: Path) -> Path | None:
    """The blobs/ folder of the repo a snapshot folder belongs to (where its symlinks may point), else None."""
    if snapshot.parent.name == "snapshots" and is_repo_folder(snapshot.parent.parent):
        return snapshot.parent.parent / "blobs"
    return None


REF_BYTES = 128  # a ref holds one commit hash (40 or 64 hex digits); anything longer is not one


def read_refs(repo: Path, quiet: bool = False) -> dict[str, str]:
    """revision name -> commit, from `refs/` (names may hold `/`; `refs/pr/` is skipped). A ref that is a link,
    not a plain file, longer than REF_BYTES, or not a commit hash is left out with a warning (unless `quiet`);
    links are never followed, here or in a linked refs/ folder."""
    from specdyn.console import warn

    refs_dir = repo / "refs"
    out = {}
    if refs_dir.is_symlink():
        if not quiet:
            warn(f"{refs_dir} is a symbolic link; a hub cache's refs are its own files: no revision read from it")
        return out
    if not refs_dir.is_dir():
        return out
    for top, dirs, files in os.walk(refs_dir):  # never into a linked folder
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(top, d))]):
            f = Path(top) / name
            rel = f.relative_to(refs_dir).as_posix()
            if rel.startswith("pr/"):
                continue
            commit, why = _read_ref(f)
            if why and not quiet:
                warn(f"{f}: {why}; revision {rel} left out", kind="refs left out")
            elif commit:
                out[rel] = commit
    return out


def _read_ref(f: Path) -> tuple[str | None, str | None]:
    """(commit, None), or (None, why the ref file is refused); reads at most REF_BYTES + 1 bytes."""
    try:
        fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return None, "a symbolic link (a ref is a plain file holding a commit hash)" if f.is_symlink() else e.strerror
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "not a plain file"
        data = os.read(fd, REF_BYTES + 1)
    finally:
        os.close(fd)
    try:
        commit = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None, "not a commit hash (not text)"
    if len(data) > REF_BYTES or not is_hash(commit) or len(commit) not in (40, 64):
        return None, f"not a commit hash ({commit[:20]!r}{'...' if len(data) > 20 else ''})"
    return commit, None


def _locate(path: Path, repo: str | None) -> tuple[Path, Path | None] | None:
    """(repo folder, the one snapshot asked for or None) when `path` is in a hub cache, else None."""
    if repo is not None:
        folder = path / repo_folder_name(repo)
        if not is_repo_folder(folder):
            held = cached_repos(path)
            if not held:
                raise SpecdynError(
                    f"--repo {repo}: {path} is not a Hugging Face hub cache (no models--*/ folders in it); pass the "
                    "cache root (e.g. ~/.cache/huggingface/hub), or the repo's models--org--name folder without --repo"
                )
            raise SpecdynError(
                f"{path}: no {repo} in this hub cache (it holds {', '.join(held)}); fetch it with "
                f"`specdyn fetch {repo} ...`",
                code=EXIT_NO_CHECKPOINTS,
            )
        return folder, None
    if is_repo_folder(path):
        return path, None
    if path.name in ("snapshots", "refs") and is_repo_folder(path.parent):
        return path.parent, None
    if blobs_of(path) is not None:
        return path.parent.parent, path
    held = cached_repos(path)
    if held:
        if len(held) == 1:
            return path / repo_folder_name(held[0]), None
        raise SpecdynError(f"{path} is a hub cache holding {len(held)} repos; pass --repo (one of {', '.join(held)})")
    return None


def hub_series(path: Path, repo: str | None = None, order: str = "step") -> list[Checkpoint] | None:
    """The checkpoints of a hub cache path (its root with `repo`, a `models--org--name` folder, its `snapshots/` or
    `refs/` dir, or one `snapshots/<commit>` folder), unordered; None when `path` is not in a hub cache."""
    from specdyn.console import warn

    located = _locate(path, repo)
    if located is None:
        return None
    folder, only = located
    name = repo_id(folder)
    by_commit: dict[str, list[str]] = {}
    for rev, commit in read_refs(folder).items():
        by_commit.setdefault(commit, []).append(rev)
    if only is not None:
        by_commit = {only.name: by_commit.get(only.name, [])}
    checkpoints = []
    for commit, revisions in sorted(by_commit.items()):
        snapshot = folder / "snapshots" / commit
        label = ", ".join(revisions) or commit
        if weights_file(snapshot) is None:
            warn(f"{folder}: revision {label} ({commit[:12]}) has no model weights in snapshots/; left out")
            continue
        checkpoints.append(_checkpoint(folder, name, snapshot, revisions, order))
    unreferenced = [s.name for s in (folder / "snapshots").glob("*") if s.name not in by_commit and only is None]
    if unreferenced:
        warn(f"{folder}: snapshots {', '.join(u[:12] for u in unreferenced)} have no revision in refs/; left out")
    if not checkpoints:
        raise SpecdynError(
            f"{folder}: no revision of {name} with model weights in this cache; fetch some with "
            f"`specdyn fetch {name} --revisions step1000,...`",
            code=EXIT_NO_CHECKPOINTS,
        )
    return checkpoints


def _checkpoint(folder: Path, name: str, snapshot: Path, revisions: list[str], order: str) -> Checkpoint:
    refused = [why for why in (parse_revision(rev)[1] for rev in revisions) if why]
    if refused and order == "step":  # found, but unusable: skipped with the reason (or refused with --strict)
        return Checkpoint(snapshot, folder, None, "hub", revisions[0], name,
                          error=f"{folder}: {refused[0]}; rename or remove it in refs/")  # fmt: skip
    stepped = {rev: revision_step(rev) for rev in revisions if revision_step(rev) is not None}
    if len(set(stepped.values())) > 1:
        listing = " and ".join(f"{r} (step {s})" for r, s in stepped.items())
        raise SpecdynError(f"{folder}: revisions {listing} are one commit {snapshot.name[:12]}; remove one ref")
    if stepped:  # a step-less name beside them (`main` on the final commit) is an alias
        revision = sorted(stepped)[0]
        return Checkpoint(snapshot, folder, stepped[revision], "hub", revision, name)
    if order == "step":
        label = " / ".join(revisions) if revisions else f"snapshots/{snapshot.name} (no ref)"
        raise SpecdynError(
            f"{folder}: revision {label} of {name} names no training step (expected e.g. step1000, "
            "step1000-tokens4B, global_step1000, iter_0001000, checkpoint-1000); remove it from refs/ or pass "
            "--order name"
        )
    return Checkpoint(snapshot, folder, None, "hub", sorted(revisions)[0] if revisions else None, name)


class HubFormat(HFFormat):
    """A revision's snapshot folder: read as an HF folder (symlinks followed into blobs/), stepped by revision."""

    name = "hub"
    describe = "Hugging Face hub caches (models--org--name/ with refs/ and snapshots/; the cache root with --repo)"
    writable = False

    def claim_dir(self, path: Path, inside_series: bool) -> Path | None:
        return path if blobs_of(path) is not None and weights_file(path) is not None else None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        steps = [revision_step(r) for r, c in read_refs(path.parent.parent, quiet=True).items() if c == path.name]
        steps = [s for s in steps if s is not None]
        return steps[0] if len(set(steps)) == 1 else None

    def step_from_name(self, path: Path) -> int | None:
        return None  # a snapshot folder is named by its commit hash: no step in it

    def checkpoint_name(self, step: int, epoch: int = 0) -> str:
        raise NotImplementedError("specdyn cannot write hub caches; `specdyn fetch` downloads into one")
