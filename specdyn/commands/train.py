"""`specdyn train TASK`: train a built-in task on CPU and write a checkpoint series specdyn reads."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from specdyn.tasks import TASKS


class Format(StrEnum):
    safetensors = "safetensors"
    torch = "torch"
    lightning = "lightning-style"
    hf = "hf-style"


class SaveDtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class MaskType(StrEnum):
    magnitude = "magnitude"
    random = "random"


BRANCH = "Branching (docs/method.md 3)"
SAVING = "Saving"


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    from specdyn.errors import EXIT_USAGE, SpecdynError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecdynError(f"--set {pair!r}: expected KEY=VALUE (e.g. --set d_mlp=256)", code=EXIT_USAGE)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def train_command(
    task: Annotated[str, typer.Argument(help=f"Built-in task: {', '.join(TASKS)}.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.", show_default="runs/TASK")] = None,
    steps: Annotated[int | None, typer.Option(help="Total optimizer steps (a branch continues to this step).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (AdamW decoupled, SGD coupled).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (0 = full batch).")] = None,
    seed: Annotated[int | None, typer.Option(help="Model init and data order (a branch's own seed).")] = None,
    data_seed: Annotated[int | None, typer.Option(help="Synthetic data and train/val split.")] = None,
    data_frac: Annotated[float | None, typer.Option(help="modadd: fraction of pairs used for training.")] = None,
    random_labels: Annotated[
        bool | None, typer.Option("--random-labels/--true-labels", help="mlp: permute all labels (memorisation).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Any config key (see --show-config).")
    ] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the full config as JSON and exit.")] = False,
    save_every: Annotated[
        int | None, typer.Option(help="Save every K steps.", show_default="steps/20", rich_help_panel=SAVING)
    ] = None,
    save_log: Annotated[
        int | None, typer.Option(help="N log-spaced saves (dense early).", rich_help_panel=SAVING)
    ] = None,
    format_: Annotated[
        Format, typer.Option("--format", help="Checkpoint layout.", rich_help_panel=SAVING)
    ] = Format.safetensors,
    save_dtype: Annotated[
        SaveDtype, typer.Option(help="Storage dtype of float tensors.", rich_help_panel=SAVING)
    ] = SaveDtype.float32,
    save_optimizer: Annotated[
        bool,
        typer.Option(
            "--save-optimizer",
            help="Also save optimizer state (optimizer/step_*.optim) so branches resume it.",
            rich_help_panel=SAVING,
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in --out.", rich_help_panel=SAVING)
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Branch from this trunk checkpoint (its step, task and config).", rich_help_panel=BRANCH),
    ] = None,
    perturb_scale: Annotated[
        float,
        typer.Option(
            help="Norm-preserving random perturbation of scale c at the branch start.", rich_help_panel=BRANCH
        ),
    ] = 0.0,
    mask_from: Annotated[
        Path | None,
        typer.Option(help="Lottery ticket: global magnitude mask from this checkpoint.", rich_help_panel=BRANCH),
    ] = None,
    density: Annotated[
        float | None, typer.Option(help="Fraction of weights the mask keeps.", rich_help_panel=BRANCH)
    ] = None,
    mask_type: Annotated[
        MaskType, typer.Option(help="magnitude, or random with the same per-layer densities.", rich_help_panel=BRANCH)
    ] = MaskType.magnitude,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (bit-identical reruns need the same count).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as JSON on stdout.")] = False,
):
    """Train a built-in task and save a checkpoint series (step_*.safetensors + run.json).

    Every save evaluates the full train and val splits. Branches start from --init-from with their own --seed;
    --perturb-scale and --mask-from/--density edit the branch start as in the paper.
    """
    import time

    import torch

    from specdyn import console
    from specdyn.errors import EXIT_USAGE, SpecdynError
    from specdyn.tasks import make_config
    from specdyn.train import Branch, read_source, train

    if task not in TASKS:
        raise SpecdynError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}", code=EXIT_USAGE)
    if save_every is not None and save_log is not None:
        raise SpecdynError("pass --save-every or --save-log, not both", code=EXIT_USAGE)
    if (density is not None) != (mask_from is not None):
        raise SpecdynError(
            "--mask-from and --density go together (e.g. --mask-from trunk/step_005000.safetensors --density 0.05)",
            code=EXIT_USAGE,
        )
    if density is not None and not 0 < density <= 1:
        raise SpecdynError(f"--density must be in (0, 1], got {density}", code=EXIT_USAGE)
    if perturb_scale < 0:
        raise SpecdynError(f"--perturb-scale must be >= 0, got {perturb_scale}", code=EXIT_USAGE)
    if threads is not None:
        torch.set_num_threads(threads)

    overrides = {k: v for k, v in dict(steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                                       seed=seed, data_seed=data_seed, data_frac=data_frac,
                                       random_labels=random_labels).items() if v is not None}  # fmt: skip
    sets = _parse_sets(set_ or [])
    twice = sorted(set(sets) & set(overrides))
    if twice:
        raise SpecdynError(f"{twice[0]} is given twice (as an option and with --set); pass it once", code=EXIT_USAGE)
    overrides.update(sets)

    trunk = read_source(init_from) if init_from is not None else None
    base = None
    if trunk is not None:
        if trunk.task is None or trunk.config is None:
            raise SpecdynError(
                f"{init_from}: no task config recorded (no specdyn metadata or run.json); branch only "
                "from checkpoints written by specdyn train"
            )
        if trunk.task != task:
            raise SpecdynError(f"{init_from} is a {trunk.task} checkpoint, not {task}; run specdyn train {trunk.task}")
        base = trunk.config
    try:
        config = make_config(task, overrides, base=base)
    except ValueError as e:
        raise SpecdynError(str(e), code=EXIT_USAGE) from None
    if show_config:
        from dataclasses import asdict

        console.print_json({"task": task, "config": asdict(config)})
        return

    branch = Branch(init_from=trunk, perturb_scale=perturb_scale, density=density, mask_type=mask_type.value,
                    mask_from=read_source(mask_from) if mask_from is not None else None)  # fmt: skip
    run_dir = out if out is not None else Path("runs") / task
    t0 = time.perf_counter()
    result = train(TASKS[task](config), run_dir, every=save_every, log=save_log, fmt=format_.value,
                   save_dtype=save_dtype.value, branch=branch, save_optimizer=save_optimizer, overwrite=overwrite,
                   show_progress=progress)  # fmt: skip
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


def register(app: typer.Typer) -> None:
    from specdyn.cli import user_errors

    app.command("train")(user_errors(train_command))
