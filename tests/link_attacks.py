"""Attack fixtures: files planted where specdyn reads or writes, as an attacker with write access to a run dir, a
hub cache or an output folder would plant them. Each returns the victim file whose contents must survive."""

from __future__ import annotations

import os
from pathlib import Path

VICTIM_TEXT = "export SECRET=1  # the victim's own file\n"


def victim(tmp_path: Path, name: str = "bashrc") -> Path:
    """A file outside everything specdyn was pointed at (stands for ~/.bashrc)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    v = home / name
    v.write_text(VICTIM_TEXT)
    return v


def plant_link(at: Path, target: Path) -> Path:
    """A symbolic link at `at` (a path specdyn writes by default) leading to `target`."""
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, at)
    return target


def plant_hard_link(at: Path, target: Path) -> Path:
    """A second name for `target` at `at` (a link O_NOFOLLOW does not see)."""
    at.parent.mkdir(parents=True, exist_ok=True)
    os.link(target, at)
    return target


def untouched(v: Path) -> bool:
    return v.read_text() == VICTIM_TEXT


# --- hub caches: links that lead outside the repo's blobs/, and refs that are not commit hashes ---------------


def hub_repo(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def link_weights_to(snapshot: Path, target: str) -> None:
    """Replace a snapshot's model.safetensors link by one to `target` (absolute, `../../../../x`, another
    repo's blob)."""
    (snapshot / "model.safetensors").unlink()
    os.symlink(target, snapshot / "model.safetensors")


def link_snapshot_to(snapshot: Path, elsewhere: Path) -> None:
    """Make the snapshot folder itself a link to a folder outside the cache holding the same files."""
    import shutil

    shutil.copytree(snapshot, elsewhere, symlinks=False)
    shutil.rmtree(snapshot)
    os.symlink(elsewhere, snapshot, target_is_directory=True)


def link_ref_to(ref: Path, target: Path) -> None:
    ref.unlink(missing_ok=True)
    os.symlink(target, ref)


REF_ATTACKS = {
    "invalid utf-8": b"\xff\xfe" + b"a" * 38,
    "not a hash": b"this is not a commit hash at all",
    "one gibibyte": None,  # a sparse 1 GiB file: read whole it cost 2.1 GB of memory
}


def write_bad_ref(ref: Path, kind: str, commit: str) -> None:
    ref.parent.mkdir(parents=True, exist_ok=True)
    if kind == "one gibibyte":
        with open(ref, "wb") as f:
            f.write(commit.encode())
            f.truncate(1 << 30)
    else:
        ref.write_bytes(REF_ATTACKS[kind])


BAD_REVISION_NAMES = ["step1e9", "step-1", "step99999999999999999999", "global_step1.5"]
