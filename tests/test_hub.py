"""Hub caches as a series: a tiny GPT-NeoX trained by the real HF Trainer, its checkpoints put into a hub cache in
huggingface_hub's layout (which huggingface_hub itself reads back), analyzed from every entry point."""

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # HF Trainer needs it
hf_hub = pytest.importorskip("huggingface_hub")

from specdyn.cli import app  # noqa: E402
from specdyn.errors import SpecdynError  # noqa: E402
from specdyn.io import discover, open_checkpoint  # noqa: E402
from specdyn.io.base import revision_step, step_from_name  # noqa: E402
from specdyn.io.hf import shard_path  # noqa: E402
from tests.hub_fixtures import add_revision, hub_cache_from_trainer, tiny_neox  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
REPO = "tiny/neox"
STEPS = [8, 16, 24, 32, 40]


@pytest.fixture(scope="session")
def hub(trained, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub") / "hub"
    commits = hub_cache_from_trainer(cache, REPO, trained)
    return cache, commits


def repo_dir(cache: Path) -> Path:
    return cache / "models--tiny--neox"


def copy_cache(cache: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "hub"
    shutil.copytree(cache, dst, symlinks=True)
    return dst


def test_huggingface_hub_reads_the_cache_back(hub):
    cache, commits = hub
    info = hf_hub.scan_cache_dir(cache)
    (repo,) = info.repos
    assert repo.repo_id == REPO
    assert {ref for rev in repo.revisions for ref in rev.refs} == {f"step{s}" for s in STEPS}
    assert {rev.commit_hash for rev in repo.revisions} == set(commits.values())
    for rev, commit in commits.items():
        path = hf_hub.try_to_load_from_cache(REPO, "model.safetensors", cache_dir=cache, revision=rev)
        assert Path(path) == repo_dir(cache) / "snapshots" / commit / "model.safetensors"
        got = hf_hub.snapshot_download(REPO, revision=rev, cache_dir=cache, local_files_only=True)
        assert Path(got) == repo_dir(cache) / "snapshots" / commit
    link = repo_dir(cache) / "snapshots" / commits["step8"] / "config.json"
    assert link.is_symlink() and os.readlink(link).startswith("../../blobs/")


@pytest.mark.parametrize("where", ["repo", "snapshots", "refs", "root"])
def test_every_entry_point_gives_the_revisions_in_step_order(hub, where):
    cache, commits = hub
    path = {"repo": repo_dir(cache), "snapshots": repo_dir(cache) / "snapshots", "refs": repo_dir(cache) / "refs"}
    ckpts = discover(path.get(where, cache), repo=REPO if where == "root" else None)
    assert [c.step for c in ckpts] == STEPS
    assert [c.revision for c in ckpts] == [f"step{s}" for s in STEPS]
    assert [c.path.name for c in ckpts] == [commits[f"step{s}"] for s in STEPS]
    assert {c.repo for c in ckpts} == {REPO} and {c.run_dir for c in ckpts} == {repo_dir(cache).resolve()}


def test_analyze_from_the_repo_folder_records_repo_and_revisions(hub, tmp_path):
    cache, commits = hub
    out = tmp_path / "s.zarr"
    result = runner.invoke(app, ["analyze", str(repo_dir(cache)), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).output)
    assert info["steps"] == STEPS
    assert [r["revision"] for r in info["rows"]] == [f"step{s}" for s in STEPS]
    assert {r["repo"] for r in info["rows"]} == {REPO}
    assert [r["checkpoint"] for r in info["rows"]] == [f"snapshots/{commits[f'step{s}']}" for s in STEPS]
    text = runner.invoke(app, ["info", str(out)]).output
    assert "tiny/neox@step24" in text
    # the same store from the cache root with --repo adds nothing (same source, same rows)
    again = runner.invoke(app, ["analyze", str(cache), "--repo", REPO, "--out", str(out), "--json", "-q"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["computed"] == 0


def test_snapshot_folders_as_run_dirs_take_their_step_from_refs_not_the_hash(hub, tmp_path):
    cache, commits = hub
    snaps = sorted((repo_dir(cache) / "snapshots").iterdir())  # hash order, not step order
    out = tmp_path / "s.zarr"
    result = runner.invoke(app, ["analyze", *map(str, snaps), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).output)
    assert info["steps"] == STEPS
    assert open_checkpoint(snaps[0]).step == revision_step(next(r for r, c in commits.items() if c == snaps[0].name))


def test_no_step_from_a_hexadecimal_hash():
    commit = "9b6ad3c2de1e595007cd5700958d51d4af811805"
    assert step_from_name(commit) is None
    assert step_from_name("2894098581245300795" + "0" * 21) is None  # 40 digits: a hash, though all digits
    assert step_from_name(f"model-{commit[:10]}.safetensors") is None
    assert step_from_name("checkpoint-500-3fa9c0e1d") == 500
    assert step_from_name("step_100.safetensors") == 100


@pytest.mark.parametrize(
    "revision, step",
    [
        ("step0", 0),
        ("step143000", 143000),  # Pythia
        ("step1000-tokens4B", 1000),  # OLMo
        ("stage1-step140000-tokens588B", 140000),  # OLMo 2
        ("global_step1000", 1000),
        ("iter_0001000", 1000),
        ("checkpoint-1000", 1000),
        ("main", None),
        ("v1.0", None),
        ("9b6ad3c2de1e595007cd5700958d51d4af811805", None),
    ],
)
def test_revision_step(revision, step):
    assert revision_step(revision) == step


def test_main_on_a_stepped_commit_is_an_alias_and_pr_refs_are_ignored(hub, tmp_path):
    cache = copy_cache(hub[0], tmp_path)
    refs = repo_dir(cache) / "refs"
    (refs / "main").write_text(hub[1]["step40"])
    (refs / "pr").mkdir()
    (refs / "pr" / "1").write_text(hub[1]["step8"])
    ckpts = discover(repo_dir(cache))
    assert [c.revision for c in ckpts] == [f"step{s}" for s in STEPS]


def test_a_revision_without_a_step_is_an_error_naming_it_unless_order_name(hub, trained, tmp_path):
    cache = copy_cache(hub[0], tmp_path)
    add_revision(cache, REPO, "main", trained / "checkpoint-40", files=("config.json", "model.safetensors"))
    with pytest.raises(SpecdynError, match=r"revision main of tiny/neox names no training step.*--order name"):
        discover(repo_dir(cache))
    result = runner.invoke(app, ["analyze", str(repo_dir(cache)), "--out", str(tmp_path / "x.zarr"), "-q"])
    assert result.exit_code != 0 and "revision main" in result.output and "Traceback" not in result.output
    named = discover(repo_dir(cache), order="name")
    assert [c.revision for c in named] == ["main", *[f"step{s}" for s in STEPS]]


def test_repo_option_errors(hub, tmp_path):
    cache = hub[0]
    with pytest.raises(SpecdynError, match="no other/model in this hub cache.*tiny/neox"):
        discover(cache, repo="other/model")
    with pytest.raises(SpecdynError, match="not a Hugging Face hub cache"):
        discover(tmp_path, repo=REPO)
    result = runner.invoke(app, ["analyze", str(cache), "--repo", "nonsense", "-q"])
    assert result.exit_code != 0 and "org/name" in result.output


def test_revisions_without_weights_are_left_out(hub, trained, tmp_path):
    cache = copy_cache(hub[0], tmp_path)
    add_revision(cache, REPO, "step48", trained / "checkpoint-40", files=("config.json",))  # config-only download
    with pytest.warns(UserWarning, match="revision step48 .* has no model weights"):
        assert [c.step for c in discover(repo_dir(cache))] == STEPS


def test_a_folder_of_step_symlinks_is_a_series(hub, tmp_path):
    cache, commits = hub
    run = tmp_path / "run"
    run.mkdir()
    for rev, commit in commits.items():
        (run / rev).symlink_to(repo_dir(cache) / "snapshots" / commit, target_is_directory=True)
    ckpts = discover(run)
    assert [(c.relpath, c.step) for c in ckpts] == [(f"step{s}", s) for s in STEPS]


def test_a_sharded_snapshot_is_read_through_its_index_and_blob_links(tmp_path):
    import torch
    from safetensors.torch import load_file

    from specdyn.io import CheckpointReader

    model = tiny_neox()
    folder = tmp_path / "saved"
    model.save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    files = ("config.json", "model.safetensors.index.json", *[s.name for s in shards])
    cache = tmp_path / "hub"
    add_revision(cache, REPO, "step5", folder, files=files)
    (ckpt,) = discover(repo_dir(cache))
    expected = {k: v for s in shards for k, v in load_file(s).items()}
    with CheckpointReader(ckpt) as reader:
        assert sorted(reader.names()) == sorted(expected)
        for name in expected:
            assert torch.equal(reader.tensor(name), expected[name])


def test_shard_names_may_not_leave_the_folder(tmp_path):
    for bad in ("../x.safetensors", "/etc/passwd", "a/../../b"):
        with pytest.raises(SpecdynError, match="not a file inside this folder"):
            shard_path(tmp_path, bad)
    assert shard_path(tmp_path, "model-1-of-2.safetensors") == tmp_path / "model-1-of-2.safetensors"


def test_the_report_draws_the_trainers_losses(hub, trained, tmp_path):
    from specdyn import open_store
    from specdyn.plots.runlog import read_run_log

    cache = hub[0]
    out = tmp_path / "s.zarr"
    assert runner.invoke(app, ["analyze", str(repo_dir(cache)), "--out", str(out), "-q"]).exit_code == 0
    log = read_run_log(open_store(out))
    state = json.loads((trained / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    want_loss = {h["step"]: h["loss"] for h in state if "loss" in h}
    want_eval = {h["step"]: h["eval_loss"] for h in state if "eval_loss" in h}
    steps = log.history["step"]
    got_loss = {int(s): float(v) for s, v in zip(steps, log.history["train_loss"]) if v == v}
    got_eval = {int(s): float(v) for s, v in zip(steps, log.history["val_loss"]) if v == v}
    assert got_loss == pytest.approx(want_loss) and got_eval == pytest.approx(want_eval)
    assert log.names == {"train_loss": "loss", "val_loss": "eval_loss", "learning_rate": "learning_rate"}
    assert log.sources[0].endswith(f"{hub[1]['step40']}/trainer_state.json")  # the last checkpoint's log
    html = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(out), "-o", str(html)])
    assert result.exit_code == 0, result.output
    text = html.read_text()
    assert "final validation loss (eval_loss)" in text and "trainer_state.json" in text
    assert f"{want_eval[40]:.4g}" in text


def test_two_stepped_revisions_of_one_commit_are_an_error_naming_both(hub, tmp_path):
    cache = copy_cache(hub[0], tmp_path)
    (repo_dir(cache) / "refs" / "step9").write_text(hub[1]["step8"])
    with pytest.raises(SpecdynError, match=r"revisions step8 \(step 8\) and step9 \(step 9\) are one commit"):
        discover(repo_dir(cache))


def test_adding_revisions_later_keeps_the_recorded_ones(hub, tmp_path):
    from specdyn import open_store

    cache = hub[0]
    out = tmp_path / "s.zarr"
    assert (
        runner.invoke(app, ["analyze", str(repo_dir(cache)), "--out", str(out), "--steps", "16:32", "-q"]).exit_code
        == 0
    )
    assert open_store(out).revisions == ["step16", "step24", "step32"]
    assert runner.invoke(app, ["analyze", str(repo_dir(cache)), "--out", str(out), "-q"]).exit_code == 0
    st = open_store(out)
    assert list(st.steps) == STEPS and st.revisions == [f"step{s}" for s in STEPS]
    assert st.sources[0]["repo"] == REPO
