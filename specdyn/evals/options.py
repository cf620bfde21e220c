"""The options of the three evaluations, declared once (imported without torch, so `specdyn --help` stays fast):
the Python API and the CLI take these fields and refuse the same inputs with the same message."""

from dataclasses import dataclass
from pathlib import Path

from specdyn.options import (
    Options,
    config_option,
    data_option,
    fractions_option,
    one_fraction,
    option,
    parse_fractions,
    task_option,
    trust_pickle_option,
)

BN_RECAL = "--bn-recal/--no-bn-recal"


@dataclass(frozen=True)
class PruneOptions(Options):
    keep: list[float] = fractions_option(
        [0.5], "--keep", help="Fraction f of singular directions the top variant keeps (ceil(f·k)); the bottom "
        "variant keeps the rest. Repeat or comma-separate for a sweep, e.g. --keep 0.1,0.25,0.5,0.75."
    )  # fmt: skip
    task: str | None = task_option()
    config: dict = config_option()
    data: str | None = data_option()
    bn_recal: bool = option(True, BN_RECAL, help="Re-estimate BatchNorm statistics on the train batches after "
                            "pruning (docs/method.md 1.9).")  # fmt: skip
    every: int | None = option(None, min=1, help="Every N-th analyzed checkpoint (and the last).")
    steps: str | None = option(None, help="Step range a:b, inclusive; either side may be empty.")
    trust_pickle: bool = trust_pickle_option()
    overwrite: bool = option(False, help="Discard earlier prune-eval results in the store first.")

    def check(self) -> None:
        parse_fractions(self.keep, "--keep")


@dataclass(frozen=True)
class InterpOptions(Options):
    points: int = option(11, min=2, help="Points on the alpha grid, both endpoints included.")
    keep: float = option(0.5, parse=lambda v: one_fraction(v, "--keep", "interpolate"), help="Fraction f of singular directions the top-kept variant keeps (ceil(f·k)); the "
                         "bottom-kept keeps the rest.")  # fmt: skip
    task: str | None = task_option()
    config: dict = config_option()
    data: str | None = data_option()
    bn_recal: bool = option(True, BN_RECAL, help="Re-estimate BatchNorm statistics at every alpha and after pruning.")
    sva_rank: int = option(64, min=1, help="Ranks of the endpoint SVA diagonal to store.")
    trust_pickle: bool = trust_pickle_option()
    overwrite: bool = option(False, help="Discard earlier interpolation results in the output store first.")

    def check(self) -> None:
        parse_fractions([str(self.keep)], "--keep")


@dataclass(frozen=True)
class LotteryOptions(Options):
    densities: list[float] = fractions_option(
        [0.05], "--density", "-d", help="Fraction of weights the mask keeps; repeat or comma-separate for several."
    )
    step: int | None = option(None, help="Checkpoint the masks come from (default: the last analyzed, as the "
                              "paper).", show_default=False)  # fmt: skip
    seed: int = option(0, help="Seed of the random baseline mask.")
    sva_rank: int = option(100, min=1, help="Ranks of SVA(SVD(W), SVD(M⊙W)) kept per matrix (the paper crops to 100).")
    masked: list[Path] = option(None, "--masked", factory=list, help="A masked run dir from `specdyn train "
                                "--mask-from` (repeatable): SVA against the dense run over time.",
                                parse=lambda v: [Path(p) for p in v])  # fmt: skip
    zip: str = option("step", "--zip", choices=("step", "index"), help="Pair masked and dense checkpoints by equal "
                      "'step' or by 'index' (position).")  # fmt: skip
    trust_pickle: bool = trust_pickle_option()

    def check(self) -> None:
        parse_fractions(self.densities, "--density")
