"""What `specdyn train` may be asked, declared once (imported without torch, so `--help` stays fast): config
overrides of the task, how to save, and how a branch departs from its trunk."""

from dataclasses import dataclass
from pathlib import Path

from specdyn.errors import EXIT_USAGE, SpecdynError
from specdyn.options import Options, one_fraction, option, parse_key_values

SAVING = "Saving"
BRANCH = "Branching (docs/method.md 3)"
SAVE_DTYPES = ("float32", "bfloat16", "float16")
MASK_TYPES = ("magnitude", "random")
# `specdyn train --format`: the writable formats of specdyn.io, and the names they had before (kept working).
FORMAT_CHOICES = ("safetensors", "torch", "lightning", "hf", "lightning-style", "hf-style")


def _path(v):
    return Path(v) if v is not None else None


@dataclass(frozen=True)
class TrainOptions(Options):
    error_code = EXIT_USAGE

    # Task config overrides (None: the task's default, or the trunk's for a branch).
    steps: int | None = option(
        None, "--max-steps", min=1, help="Total optimizer steps (a branch continues to this step).", old="--steps"
    )
    lr: float | None = option(None, help="Peak learning rate.")
    weight_decay: float | None = option(None, help="Weight decay (AdamW decoupled, SGD coupled).")
    batch_size: int | None = option(None, min=0, help="Batch size (0 = full batch).")
    seed: int | None = option(None, help="Model init and data order (a branch's own seed).")
    data_seed: int | None = option(None, help="Synthetic data and train/val split.")
    data_frac: float | None = option(None, help="modadd: fraction of pairs used for training.")
    random_labels: bool | None = option(None, "--random-labels/--true-labels", help="mlp: permute all labels "
                                        "(memorisation).")  # fmt: skip
    sets: dict = option(None, "--set", "-s", factory=dict, metavar="KEY=VALUE", help="Any config key (see "
                        "--show-config).", parse=lambda v: parse_key_values(v, "--set", "d_mlp=256", EXIT_USAGE))  # fmt: skip
    # Saving.
    save_every: int | None = option(None, min=1, help="Save every K steps.", show_default="steps/20", panel=SAVING)
    save_log: int | None = option(None, min=1, help="N log-spaced saves (dense early).", panel=SAVING)
    format: str = option("safetensors", choices=FORMAT_CHOICES, help="Checkpoint layout.", panel=SAVING)
    save_dtype: str = option("float32", choices=SAVE_DTYPES, help="Storage dtype of float tensors.", panel=SAVING)
    save_optimizer: bool = option(False, help="Also save optimizer state (optimizer/step_*.optim) so branches "
                                  "resume it.", panel=SAVING)  # fmt: skip
    overwrite: bool = option(False, help="Replace a run already in --out.", panel=SAVING)
    # Branching.
    init_from: Path | None = option(None, help="Branch from this trunk checkpoint (its step, task and config).",
                                    panel=BRANCH, parse=_path)  # fmt: skip
    perturb_scale: float = option(0.0, min=0, help="Norm-preserving random perturbation of scale c at the branch "
                                  "start.", panel=BRANCH)  # fmt: skip
    mask_from: Path | None = option(None, help="Lottery ticket: global magnitude mask from this checkpoint.",
                                    panel=BRANCH, parse=_path)  # fmt: skip
    density: float | None = option(None, help="Fraction of weights the mask keeps (one; lottery sweeps several).",
                                   panel=BRANCH, parse=lambda v: one_fraction(v, "--density", "train"))  # fmt: skip
    mask_type: str = option("magnitude", choices=MASK_TYPES, help="magnitude, or random with the same per-layer "
                            "densities.", panel=BRANCH)  # fmt: skip
    threads: int | None = option(None, min=1, help="torch CPU threads (bit-identical reruns need the same count).")

    def check(self) -> None:
        if self.save_every is not None and self.save_log is not None:
            raise SpecdynError("pass --save-every or --save-log, not both", code=EXIT_USAGE)
        if (self.density is not None) != (self.mask_from is not None):
            raise SpecdynError(
                "--mask-from and --density go together (e.g. --mask-from trunk/step_005000.safetensors --density 0.05)",
                code=EXIT_USAGE,
            )
        if self.density is not None and not 0 < self.density <= 1:
            raise SpecdynError(f"--density must be in (0, 1], got {self.density}", code=EXIT_USAGE)
        twice = sorted(set(self.sets) & set(self._named_overrides()))
        if twice:
            raise SpecdynError(f"{twice[0]} is given twice (as an option and with --set); pass it once",
                               code=EXIT_USAGE)  # fmt: skip

    def _named_overrides(self) -> dict:
        named = {"steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                 "seed": self.seed, "data_seed": self.data_seed, "data_frac": self.data_frac,
                 "random_labels": self.random_labels}  # fmt: skip
        return {k: v for k, v in named.items() if v is not None}

    def config_overrides(self) -> dict:
        """Every config key the user set, by name or with --set."""
        return {**self._named_overrides(), **self.sets}
