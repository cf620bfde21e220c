"""`specdyn train TASK`: train a built-in task on CPU and write a checkpoint series specdyn reads."""

from pathlib import Path
from typing import Annotated

import typer

from specdyn.commands.common import JsonFlag, QuietFlag, cli_command, deprecated
from specdyn.tasks import TASKS
from specdyn.train_options import TrainOptions


def train_command(
    task: Annotated[str, typer.Argument(help=f"Built-in task: {', '.join(TASKS)}.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.", show_default="runs/TASK")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the full config as JSON and exit.")] = False,
    quiet: QuietFlag = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", hidden=True)] = False,
    seeds: Annotated[
        str | None, typer.Option(help="Train once per seed (e.g. 0,1,2), into OUT-s0, OUT-s1, ... (a condition).")
    ] = None,
    json_out: JsonFlag = False,
    *,
    opts: TrainOptions,
):
    """Train a built-in task and save a checkpoint series (step_*.safetensors + run.json).

    Every save evaluates the full train and val splits. Branches start from --init-from with their own --seed;
    --perturb-scale and --mask-from/--density edit the branch start as in the paper.
    """
    if no_progress:
        deprecated("--no-progress", "--quiet")
        quiet = True
    progress = not quiet
    if seeds is not None:
        return _train_seeds(task, out, show_config, progress, seeds, json_out, opts)
    import time

    import torch

    from specdyn import console
    from specdyn.errors import EXIT_USAGE, SpecdynError
    from specdyn.train import train

    if task not in TASKS:
        raise SpecdynError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}", code=EXIT_USAGE)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    branch, config = _branch_and_config(task, opts)
    if show_config:
        from dataclasses import asdict

        console.print_json({"task": task, "config": asdict(config)})
        return
    run_dir = out if out is not None else Path("runs") / task
    t0 = time.perf_counter()
    result = train(TASKS[task](config), run_dir, every=opts.save_every, log=opts.save_log, fmt=opts.format,
                   save_dtype=opts.save_dtype, branch=branch, save_optimizer=opts.save_optimizer,
                   overwrite=opts.overwrite, show_progress=progress)  # fmt: skip
    elapsed = time.perf_counter() - t0
    final = result.history[-1]
    crossed = next((h["step"] for h in result.history if h.get("val_err", 1.0) < 0.05), None)
    summary = {"run_dir": str(run_dir), "task": task, "checkpoints": len(result.checkpoints), "final": final,
               "val_err_below_5pct_at": crossed, "seconds": round(elapsed, 1), **result.info}  # fmt: skip
    if json_out:
        console.print_json(summary)
    else:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k != "step")
        console.info(f"wrote {len(result.checkpoints)} checkpoints to {run_dir} in {elapsed:.0f}s; "
                     f"step {final['step']}: {metrics}")  # fmt: skip
    return summary


def _train_seeds(task, out, show_config, progress, seeds: str, json_out: bool, opts: TrainOptions) -> list[dict]:
    """`--seeds 0,1,2`: one run per seed into OUT-s<seed> (for `plot compare --group NAME='OUT-s*'`)."""
    from specdyn import console
    from specdyn.errors import EXIT_USAGE, SpecdynError

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise SpecdynError(
            f"--seeds {seeds!r}: expected integers separated by commas (e.g. 0,1,2)", code=EXIT_USAGE
        ) from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise SpecdynError(f"--seeds {seeds!r}: expected distinct integers (e.g. 0,1,2)", code=EXIT_USAGE)
    if opts.seed is not None:
        raise SpecdynError("pass --seed or --seeds, not both", code=EXIT_USAGE)
    base = out if out is not None else Path("runs") / task
    summaries = [
        train_command(
            task,
            base.with_name(f"{base.name}-s{s}"),
            show_config,
            not progress,
            False,
            None,
            False,
            opts=opts.replace(seed=s),
        )
        for s in seed_list
    ]
    if json_out:
        console.print_json(summaries)
    return summaries


def _branch_and_config(task: str, opts: TrainOptions):
    """The branch point (trunk checkpoint, perturbation, mask) and the task config: the trunk's config for a
    branch, the task's defaults otherwise, with the user's overrides on top."""
    from specdyn.errors import EXIT_USAGE, SpecdynError
    from specdyn.tasks import make_config
    from specdyn.train import Branch, read_source

    trunk = read_source(opts.init_from) if opts.init_from is not None else None
    base = None
    if trunk is not None:
        if trunk.task is None or trunk.config is None:
            raise SpecdynError(
                f"{opts.init_from}: no task config recorded (no specdyn metadata or run.json); branch only "
                "from checkpoints written by specdyn train"
            )
        if trunk.task != task:
            raise SpecdynError(
                f"{opts.init_from} is a {trunk.task} checkpoint, not {task}; run specdyn train {trunk.task}"
            )
        base = trunk.config
    try:
        config = make_config(task, opts.config_overrides(), base=base)
    except ValueError as e:
        raise SpecdynError(str(e), code=EXIT_USAGE) from None
    mask_from = read_source(opts.mask_from) if opts.mask_from is not None else None
    branch = Branch(init_from=trunk, perturb_scale=opts.perturb_scale, density=opts.density,
                    mask_type=opts.mask_type, mask_from=mask_from)  # fmt: skip
    return branch, config


def register(app: typer.Typer) -> None:
    from specdyn.commands.common import user_errors

    app.command("train")(user_errors(cli_command(train_command, TrainOptions)))
