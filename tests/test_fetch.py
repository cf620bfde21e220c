"""`specdyn fetch`, tested at the huggingface_hub boundary only (CI cannot reach the hub): `list_repo_refs` and
downloading `snapshot_download` calls are stood in for by functions that write the cache the way huggingface_hub
does; the "already cached?" check runs huggingface_hub's own offline `snapshot_download(local_files_only=True)`."""

import fnmatch
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

hf_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("accelerate")

from specdyn.cli import app  # noqa: E402
from specdyn.errors import SpecdynError  # noqa: E402
from specdyn.io import discover  # noqa: E402
from specdyn.io.fetch import FetchOptions, choose  # noqa: E402
from tests.hub_fixtures import add_revision  # noqa: E402

runner = CliRunner()
REPO = "tiny/neox"
PYTHIA = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 143001, 1000))


class StandIn:
    """list_repo_refs and the downloading snapshot_download of a hub holding `revisions` of one Trainer run."""

    def __init__(self, monkeypatch, trained, names):
        self.names, self.trained, self.downloads = names, trained, []
        real = hf_hub.snapshot_download
        monkeypatch.setattr(hf_hub, "list_repo_refs", self.list_repo_refs)

        def snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False):
            if local_files_only:
                return real(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
            self.downloads.append((revision, tuple(allow_patterns)))
            folder = self.trained / "checkpoint-40"
            files = [f.name for f in folder.iterdir() if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns)]
            commit = add_revision(Path(cache_dir), repo_id, revision, folder, files=files)
            return str(Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit)

        monkeypatch.setattr(hf_hub, "snapshot_download", snapshot_download)

    def list_repo_refs(self, repo_id, **kw):
        if repo_id != REPO:
            raise OSError(f"404 Client Error: repository {repo_id} not found")
        return SimpleNamespace(branches=[SimpleNamespace(name=n) for n in self.names], tags=[])


def test_log_spaced_revisions_from_the_repos_refs(monkeypatch, trained):
    StandIn(monkeypatch, trained, ["main"] + [f"step{s}" for s in PYTHIA])
    got = choose(REPO, FetchOptions(log_spaced=8))
    steps = [int(r[4:]) for r in got]
    assert steps[0] == 0 and steps[-1] == 143000 and 6 <= len(steps) <= 9
    assert steps == sorted(steps) and any(s < 100 for s in steps) and any(1000 <= s < 20000 for s in steps)
    assert choose(REPO, FetchOptions(revisions="step0, step1000,step0")) == ["step0", "step1000"]
    limited = choose(REPO, FetchOptions(log_spaced=4, steps="1000:10000"))
    assert limited[0] == "step1000" and limited[-1] == "step10000"


def test_fetch_downloads_weights_and_config_once_then_analyze_reads_them(monkeypatch, trained, tmp_path):
    hub = StandIn(monkeypatch, trained, ["main", "step8", "step16", "step24"])
    cache = tmp_path / "hub"
    args = ["fetch", REPO, "--log-spaced", "3", "--cache-dir", str(cache), "--json", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["fetched"] == ["step8", "step16", "step24"] and summary["already_cached"] == []
    assert all("*.safetensors" in pats and "config.json" in pats for _, pats in hub.downloads)
    assert not any("pytorch_model*.bin" in pats for _, pats in hub.downloads)  # safetensors found: no pickles
    snapshot = next((cache / "models--tiny--neox" / "snapshots").iterdir())
    assert not (snapshot / "training_args.bin").exists() and (snapshot / "trainer_state.json").exists()
    # resumable: a rerun finds every revision complete through huggingface_hub's offline lookup
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["fetched"] == [] and again["already_cached"] == ["step8", "step16", "step24"]
    assert len(hub.downloads) == 3
    folder = summary["analyze"].split()[2]
    assert [c.step for c in discover(folder)] == [8, 16, 24]
    text = runner.invoke(app, ["fetch", REPO, "--revisions", "step8", "--cache-dir", str(cache)]).output
    assert "analyze them: specdyn analyze" in text


def test_fetch_errors_are_one_line(monkeypatch, trained, tmp_path):
    StandIn(monkeypatch, trained, ["main"])
    result = runner.invoke(app, ["fetch", "other/model", "--log-spaced", "4", "--cache-dir", str(tmp_path)])
    assert (
        result.exit_code != 0
        and "repository other/model not found" in result.output
        and "Traceback" not in result.output
    )
    with pytest.raises(SpecdynError, match="no branch or tag names a step"):
        choose(REPO, FetchOptions(log_spaced=4))
    with pytest.raises(SpecdynError, match="--revisions .* or --log-spaced N"):
        FetchOptions()
    with pytest.raises(SpecdynError, match="one of them"):
        FetchOptions(revisions="step1", log_spaced=3)


def test_offline_the_real_list_repo_refs_fails_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_hub.constants, "HF_HUB_OFFLINE", True)
    result = runner.invoke(app, ["fetch", REPO, "--log-spaced", "4", "--cache-dir", str(tmp_path)])
    assert result.exit_code != 0 and "could not be reached" in result.output and "Traceback" not in result.output


def test_fetch_without_cache_dir_uses_huggingface_hubs_cache(monkeypatch, tmp_path):
    """huggingface_hub 1.x/2.x no longer import `constants` with the package (it was an AttributeError); the
    oldest supported release (0.23) is checked by .ci/run, which reruns this test with it."""
    import importlib

    constants = importlib.import_module("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    result = runner.invoke(app, ["fetch", REPO, "--revisions", "step0,step8", "--dry-run", "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["cache_dir"] == str(tmp_path / "hf-cache") and summary["revisions"] == ["step0", "step8"]
    assert summary["analyze"].split()[2] == str(tmp_path / "hf-cache" / "models--tiny--neox")
