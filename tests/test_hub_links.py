"""Hub caches an attacker wrote into (issue 17, items 3 and 12): links leading outside the repo's blobs/ are
refused for single files, snapshot folders and refs as they are for shards; refs are read bounded and must hold a
commit hash; revision names that look like a step but are not `step<digits>` are refused with the reason. The
attacks are in tests/link_attacks.py."""

import json
import os
import tracemalloc
import warnings

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from specdyn.cli import app
from specdyn.console import SpecdynWarning
from specdyn.errors import CheckpointError
from specdyn.io import CheckpointReader, discover
from specdyn.io.base import parse_revision
from specdyn.io.hf import trainer_metadata
from specdyn.io.hub import read_refs
from tests.hub_fixtures import add_revision
from tests.link_attacks import (
    BAD_REVISION_NAMES,
    REF_ATTACKS,
    hub_repo,
    link_ref_to,
    link_snapshot_to,
    link_weights_to,
    write_bad_ref,
)

REPO = "tiny/lin"
FILES = ("config.json", "model.safetensors")


@pytest.fixture
def cache(tmp_path):
    """A hub cache of `tiny/lin` with revisions step1 and step2 (a 4x3 linear layer), and `other/repo` beside it."""
    cache = tmp_path / "hub"
    commits = {}
    for step in (1, 2):
        folder = tmp_path / f"saved{step}"
        folder.mkdir()
        torch.manual_seed(step)
        save_file({"lin.weight": torch.randn(4, 3)}, str(folder / "model.safetensors"), {"format": "pt"})
        (folder / "config.json").write_text(json.dumps({}))
        commits[f"step{step}"] = add_revision(cache, REPO, f"step{step}", folder, files=FILES)
    add_revision(cache, "other/repo", "step1", tmp_path / "saved2", files=FILES)
    return cache, commits


def snapshot(cache, commits, rev="step2"):
    return hub_repo(cache, REPO) / "snapshots" / commits[rev]


def open_all(repo):
    for c in discover(repo):
        with CheckpointReader(c) as r:
            r.names()


@pytest.mark.parametrize("where", ["absolute", "dotdot", "other repo's blobs"])
def test_a_single_weights_file_leading_outside_the_blobs_is_refused(cache, tmp_path, where):
    cache, commits = cache
    snap = snapshot(cache, commits)
    real = (snap / "model.safetensors").resolve()
    outside = tmp_path / "x.safetensors"
    outside.write_bytes(real.read_bytes())
    other = hub_repo(cache, "other/repo") / "blobs" / real.name  # the same contents, another repo's blobs
    target = {"absolute": str(outside), "dotdot": "../../../../x.safetensors",
              "other repo's blobs": os.path.relpath(other, snap)}[where]  # fmt: skip
    assert os.path.exists(snap / target) or os.path.isabs(target)
    link_weights_to(snap, target)
    with pytest.raises(CheckpointError, match="leads outside the checkpoint folder and its hub blobs"):
        open_all(hub_repo(cache, REPO))


def test_a_snapshot_folder_that_is_a_link_is_refused_a_users_link_to_one_is_read(cache, tmp_path):
    cache, commits = cache
    run = tmp_path / "run"
    run.mkdir()
    (run / "step1").symlink_to(snapshot(cache, commits, "step1"), target_is_directory=True)
    open_all(run)  # the user's own links to snapshots: a series
    link_snapshot_to(snapshot(cache, commits), tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="this hub snapshot is a symbolic link"):
        open_all(hub_repo(cache, REPO))


def test_a_config_leading_outside_is_not_read(cache, tmp_path):
    cache, commits = cache
    snap = snapshot(cache, commits)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"token": "s3cret"}))
    (snap / "config.json").unlink()
    os.symlink(secret, snap / "config.json")
    with pytest.warns(SpecdynWarning, match="leads outside"):
        assert trainer_metadata(snap) == {}


def test_refs_that_are_links_are_left_out(cache, tmp_path):
    cache, commits = cache
    repo = hub_repo(cache, REPO)
    outside = tmp_path / "ref"
    outside.write_text(commits["step2"])
    link_ref_to(repo / "refs" / "step2", outside)
    with pytest.warns(SpecdynWarning, match="symbolic link"):
        assert read_refs(repo) == {"step1": commits["step1"]}
    elsewhere = tmp_path / "refs-elsewhere"
    (repo / "refs").rename(elsewhere)
    (repo / "refs").symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(SpecdynWarning, match="refs is a symbolic link"):
        assert read_refs(repo) == {}


@pytest.mark.parametrize("kind", sorted(REF_ATTACKS))
def test_damaged_refs_are_read_bounded_and_left_out(cache, kind):
    cache, commits = cache
    repo = hub_repo(cache, REPO)
    write_bad_ref(repo / "refs" / "step2", kind, commits["step2"])
    tracemalloc.start()
    try:
        with pytest.warns(SpecdynWarning, match="not a commit hash"):
            refs = read_refs(repo)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refs == {"step1": commits["step1"]} and peak < 1 << 20
    assert [c.step for c in discover(repo)] == [1]


@pytest.mark.parametrize("name", BAD_REVISION_NAMES)
def test_revision_names_that_are_not_step_digits_are_refused_with_the_reason(cache, name):
    cache, commits = cache
    repo = hub_repo(cache, REPO)
    (repo / "refs" / "step2").rename(repo / "refs" / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = discover(repo)
    assert [c.step for c in found if not c.error] == [1]
    (bad,) = [c for c in found if c.error]
    assert name in bad.error and ("not a step name" in bad.error or "out of range" in bad.error)


def test_parse_revision():
    assert parse_revision("step1000-tokens4B") == (1000, None)
    assert parse_revision("main") == (None, None)
    for name in BAD_REVISION_NAMES:
        step, why = parse_revision(name)
        assert step is None and name in why
    assert parse_revision("9" * 5000)[0] is None  # no int() of 5000 digits (a ValueError since Python 3.11)


def test_analyze_skips_a_refused_revision_with_one_line_and_strict_refuses(cache, tmp_path):
    cache, commits = cache
    (tmp_path / "x.safetensors").write_bytes((snapshot(cache, commits) / "model.safetensors").read_bytes())
    link_weights_to(snapshot(cache, commits), str(tmp_path / "x.safetensors"))
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", str(hub_repo(cache, REPO)), "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0 and "leads outside" in result.stderr, result.output
    from specdyn import open_store

    assert list(open_store(tmp_path / "s.zarr").steps) == [1]
    result = runner.invoke(app, ["analyze", str(hub_repo(cache, REPO)), "--out", str(tmp_path / "t.zarr"), "--strict"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "leads outside" in last


def test_a_training_log_leading_outside_is_not_read(cache, tmp_path):
    from specdyn.io.runmeta import read_run_log

    cache, commits = cache
    snap = snapshot(cache, commits)
    secret = tmp_path / "state.json"
    secret.write_text(json.dumps({"log_history": [{"step": 2, "loss": 1.0}]}))
    os.symlink(secret, snap / "trainer_state.json")
    with pytest.warns(SpecdynWarning, match="leads outside"):
        log = read_run_log([hub_repo(cache, REPO)], [snap])
    assert not log.sources
