"""`specdyn fetch`: download revisions of a hub repo (weights, config, tokenizer, trainer_state.json) into the
normal Hugging Face cache with huggingface_hub's `snapshot_download`, so `specdyn analyze` reads them as a series.

A thin wrapper: huggingface_hub resolves, downloads, resumes interrupted files and lays out the cache. specdyn
picks the revisions (a list, or about N log-spaced ones among the repo's step-named branches and tags from
`list_repo_refs`), skips those already complete in the cache, and prefers safetensors over pickled `.bin`
weights (both are fetched only when a revision has no safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specdyn.errors import SpecdynError
from specdyn.io.base import revision_step
from specdyn.io.hf import weights_file
from specdyn.io.hub import repo_folder_name
from specdyn.options import Options, option

COMMON = ["config.json", "generation_config.json", "trainer_state.json", "tokenizer*", "special_tokens_map.json",
          "vocab.*", "merges.txt", "*.model"]  # fmt: skip
SAFETENSORS = ["*.safetensors", "*.safetensors.index.json"]
PICKLED = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


@dataclass(frozen=True)
class FetchOptions(Options):
    revisions: str | None = option(
        None, metavar="REV,REV,...", help="Revisions to fetch, e.g. step0,step1000,step143000."
    )
    log_spaced: int | None = option(
        None, min=2, help="About N revisions spaced evenly in log(step) among the repo's step-named branches and tags."
    )
    steps: str | None = option(None, help="With --log-spaced: only revisions with steps in a:b (inclusive).")
    cache_dir: str | None = option(
        None, "--cache-dir", help="Hub cache to download into (default: huggingface_hub's, HF_HOME/hub)."
    )
    dry_run: bool = option(False, help="Print the revisions that would be fetched; download nothing.")

    def check(self) -> None:
        if (self.revisions is None) == (self.log_spaced is None):
            raise SpecdynError("pass --revisions step0,step1000,... or --log-spaced N (one of them)")
        if self.steps and self.log_spaced is None:
            raise SpecdynError("--steps selects among the repo's revisions; use it with --log-spaced")

    def revision_list(self) -> list[str]:
        revs = [r.strip() for r in (self.revisions or "").split(",") if r.strip()]
        if self.revisions is not None and not revs:
            raise SpecdynError(f"--revisions {self.revisions!r}: give revision names, e.g. step0,step1000")
        return list(dict.fromkeys(revs))


def hub():
    try:
        import huggingface_hub
    except ImportError:
        raise SpecdynError("specdyn fetch needs huggingface_hub: pip install 'specdyn[hub]'") from None
    return huggingface_hub


def default_cache() -> str:
    """huggingface_hub's cache folder (HF_HUB_CACHE, HF_HOME/hub). `huggingface_hub.constants` is a submodule that
    1.x and 2.x no longer import with the package, so it is imported by name (0.23 has it too)."""
    import importlib

    hub()
    return importlib.import_module("huggingface_hub.constants").HF_HUB_CACHE


def _hub_error(repo: str, e: Exception) -> SpecdynError:
    kind = type(e).__name__
    first = str(e).strip().splitlines()[0] if str(e).strip() else kind
    return SpecdynError(f"{repo}: the hub refused or could not be reached ({kind}: {first})")


def step_revisions(repo: str) -> list[tuple[int, str]]:
    """(step, revision) of every branch and tag of `repo` whose name states a step, by step (one per step)."""
    try:
        refs = hub().list_repo_refs(repo)
    except SpecdynError:
        raise
    except Exception as e:  # offline, unknown repo, gated repo: one line
        raise _hub_error(repo, e) from None
    names = [r.name for r in [*refs.branches, *refs.tags]]
    by_step: dict[int, str] = {}
    for name in sorted(names):
        step = revision_step(name)
        if step is not None:
            by_step.setdefault(step, name)
    return sorted(by_step.items())


def choose(repo: str, opts: FetchOptions) -> list[str]:
    """The revisions to fetch: the given list, or about N among the repo's step revisions spaced evenly in
    log(step) (Pythia's log-spaced early steps and linear later ones both thin out evenly), first and last kept."""
    import numpy as np

    from specdyn.selection import subsample

    if opts.revisions is not None:
        return opts.revision_list()
    found = subsample(step_revisions(repo), steps=opts.steps, key=lambda sr: sr[0])
    if not found:
        raise SpecdynError(f"{repo}: no branch or tag names a step (like step1000); pass --revisions")
    log_steps = np.log1p([s for s, _ in found])
    targets = np.linspace(log_steps[0], log_steps[-1], opts.log_spaced)
    picked = {int(np.abs(log_steps - t).argmin()) for t in targets} | {0, len(found) - 1}
    return [found[i][1] for i in sorted(picked)]


def cached(repo: str, revision: str, cache_dir) -> Path | None:
    """The revision's snapshot folder when huggingface_hub finds it in the cache offline with weights and config."""
    try:
        folder = Path(hub().snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises its own LocalEntryNotFoundError)
        return None
    return folder if weights_file(folder) and (folder / "config.json").is_file() else None


def download(repo: str, revision: str, cache_dir) -> Path:
    """One revision into the cache: safetensors first, pickled weights only when there are none."""
    h = hub()
    try:
        folder = Path(h.snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                          allow_patterns=COMMON + SAFETENSORS))  # fmt: skip
        if weights_file(folder) is None:
            folder = Path(h.snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                              allow_patterns=COMMON + PICKLED))  # fmt: skip
    except Exception as e:
        raise _hub_error(f"{repo}@{revision}", e) from None
    if weights_file(folder) is None:
        raise SpecdynError(f"{repo}@{revision}: no model weights (safetensors or pytorch_model.bin) in this revision")
    return folder


def fetch(repo: str, opts: FetchOptions, show_progress: bool = True) -> dict:
    """Fetch the chosen revisions (skipping complete ones); the summary names the analyze command to run next."""
    from specdyn import console

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SpecdynError(f"{repo!r}: give the hub repo id as org/name, e.g. EleutherAI/pythia-70m")
    cache_dir = opts.cache_dir or default_cache()
    revisions = choose(repo, opts)
    done, fetched = [], []
    if not opts.dry_run:
        bar = console.progress() if show_progress else None
        with bar or _Null():
            task = bar.add_task(f"fetch {repo}", total=len(revisions)) if bar else None
            for rev in revisions:
                if bar:
                    bar.update(task, description=f"fetch {repo}@{rev}")
                if cached(repo, rev, cache_dir) is not None:
                    done.append(rev)
                else:
                    download(repo, rev, cache_dir)
                    fetched.append(rev)
                if bar:
                    bar.advance(task)
    folder = Path(cache_dir) / repo_folder_name(repo)
    name = repo.split("/")[1]
    return {
        "repo": repo,
        "cache_dir": str(cache_dir),
        "revisions": revisions,
        "fetched": fetched,
        "already_cached": done,
        "dry_run": opts.dry_run,
        "analyze": f"specdyn analyze {folder} --out {name}.zarr",
    }


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
