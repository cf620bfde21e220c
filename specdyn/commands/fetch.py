"""`specdyn fetch ORG/NAME --revisions step0,step1000,... | --log-spaced N`: revisions of a hub repo into the
Hugging Face cache (a thin wrapper over huggingface_hub's snapshot_download), then the analyze command to run."""

from typing import Annotated

import typer

from specdyn.commands.common import JsonFlag, QuietFlag, cli_command
from specdyn.io.fetch import FetchOptions


def fetch_command(
    repo: Annotated[str, typer.Argument(help="Hub repo id, e.g. EleutherAI/pythia-70m.", show_default=False)],
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    *,
    opts: FetchOptions,
):
    """Download revisions of a hub repo (weights, config, tokenizer, trainer_state.json) into the hub cache.

    Resumable: revisions already complete in the cache are skipped, interrupted files resume. Needs
    huggingface_hub (pip install huggingface_hub, or the specdyn hub extra) and network access to the hub.
    """
    from specdyn import console
    from specdyn.io.fetch import fetch

    summary = fetch(repo, opts, show_progress=not quiet)
    if json_out:
        console.print_json(summary)
        return
    if summary["dry_run"]:
        console.info(f"would fetch {len(summary['revisions'])} revisions: {', '.join(summary['revisions'])}")
    else:
        console.info(
            f"[green]✓[/green] {repo}: {len(summary['fetched'])} revisions fetched, "
            f"{len(summary['already_cached'])} already cached, into {summary['cache_dir']}"
        )
    console.info(f"analyze them: {summary['analyze']}")


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("fetch")(user_errors(cli_command(fetch_command, FetchOptions)))
