"""What an analyze run may be asked, declared once: the Python API and `specdyn analyze` take these fields and
refuse the same inputs with the same message."""

from dataclasses import dataclass

from specdyn.errors import SpecdynError
from specdyn.options import Options, fractions_option, option, trust_pickle_option
from specdyn.spectral.svd import ROUTES

SELECT = "Selecting checkpoints and tensors"
DEFAULT_TOPK = 64
MAX_TOPK = 1 << 20  # far above any matrix's rank; larger values are refused before anything is read
COMPUTE = "Computing"
BASE = "Comparing with the base model"
INTRUDER_EPSILONS = [0.5, 0.6, 0.7, 0.8, 0.9]  # Shuttleworth et al. (arXiv 2410.21228) sweep these thresholds
INTRUDER_TOPK = 10  # their k: the fine-tuned matrix's top singular vectors examined


@dataclass(frozen=True)
class AnalyzeOptions(Options):
    topk: int = option(
        DEFAULT_TOPK,
        "--topk",
        min=0,
        max=MAX_TOPK,
        help="Singular vectors kept per matrix (stability, alignment, pruning); 0: singular values and the metrics "
        "of them only (ranks, norms, heavy tails), fastest.",
    )
    include: list[str] = option(factory=list, help="Only tensors matching this glob (repeatable).", panel=SELECT)
    exclude: list[str] = option(factory=list, help="Skip tensors matching this glob (repeatable).", panel=SELECT)
    every: int | None = option(None, min=1, help="Every N-th checkpoint (and the last).", panel=SELECT)
    log_spaced: int | None = option(None, min=2, help="About N checkpoints spaced evenly in log(index).", panel=SELECT)
    steps: str | None = option(None, help="Step range a:b, inclusive; either side may be empty.", panel=SELECT)
    order: str = option(
        "step", choices=("step", "name"), help="Order checkpoints by training 'step' or natural 'name'.", panel=SELECT
    )
    repo: str | None = option(
        None,
        help="With a Hugging Face hub cache root as RUN_DIR: the repo to analyze (org/name), one checkpoint per "
        "revision in its refs/.",
        metavar="ORG/NAME",
        panel=SELECT,
    )
    pairs_file: str | None = option(
        None,
        "--alignment-pairs",
        metavar="FILE",
        help="File of alignment pairs, one `prev next` per line.",
        old="--pairs",
    )
    heads: int | None = option(None, min=1, help="Attention heads (default: from checkpoint config).")
    device: str = option("cpu", help="'cpu' or 'cuda' (GPU SVDs).", panel=COMPUTE)
    svd_route: str = option(
        "auto",
        choices=("auto", *ROUTES),
        help=f"'auto' (fastest measured per shape), or pin {', '.join(repr(r) for r in ROUTES)}.",
        panel=COMPUTE,
    )
    recalibrate: bool = option(
        False,
        help="Measure the SVD routes again on this machine (choices are cached in ~/.cache/specdyn).",
        panel=COMPUTE,
    )
    workers: int = option(1, min=1, help="Processes over checkpoints; BLAS threads = cores / workers.", panel=COMPUTE)
    dask: str | None = option(
        None,
        help="Run checkpoints on Dask: 'local' (a LocalCluster of --workers processes) "
        "or a scheduler address. Needs specdyn[dask].",
        panel=COMPUTE,
    )
    settle: float | None = option(
        None,
        min=0,
        help="Read a checkpoint only once its files are unmodified this many seconds (and a safetensors file's "
        "size matches its header); default 0, with --watch 2.",
        panel=SELECT,
    )
    base: str | None = option(
        None,
        "--base",
        metavar="PATH|first",
        help="The model the run started from: a model folder (config.json + weights), a checkpoint file, a hub "
        "cache models--org--name folder, or 'first' (the series' first checkpoint). Adds the arrays relative to "
        "it (delta_*, base_overlap, intruders). An adapter series defaults to its base_model_name_or_path in the "
        "local hub cache.",
        panel=BASE,
    )
    base_revision: str | None = option(
        None, help="With --base a hub cache repo folder: the revision (default: main).", panel=BASE
    )
    intruder_epsilon: list[float] = fractions_option(
        INTRUDER_EPSILONS,
        "--intruder-epsilon",
        help="Thresholds on the largest |cosine| with the base's singular vectors below which a top singular "
        "vector is an intruder (repeatable or comma-separated).",
        panel=BASE,
    )
    intruder_topk: int = option(
        INTRUDER_TOPK, min=1, max=MAX_TOPK, help="Top singular vectors examined for intruders.", panel=BASE
    )
    strict: bool = option(False, help="Fail on an unreadable checkpoint instead of skipping it.")
    trust_pickle: bool = trust_pickle_option()
    overwrite: bool = option(False, help="Delete an existing store first.")
    repair: bool = option(
        False,
        help="Read the whole store and recompute, from the checkpoints, every row with a damaged or missing chunk "
        "(or a deleted matrix folder).",
    )

    def check(self) -> None:
        if self.repo is not None and (self.repo.count("/") != 1 or not all(self.repo.split("/"))):
            raise SpecdynError(f"--repo {self.repo!r}: give the hub repo id as org/name, e.g. EleutherAI/pythia-70m")
        if not self.intruder_epsilon:
            raise SpecdynError("--intruder-epsilon: give at least one threshold in (0, 1], e.g. 0.5,0.9")
        if self.base_revision is not None and self.base in (None, "first"):
            raise SpecdynError("--base-revision: needs --base, a hub cache models--org--name folder")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SpecdynError(f"--device {self.device}: no CUDA device is available here; use --device cpu")
        elif self.device != "cpu":
            raise SpecdynError(f"--device {self.device!r}: use 'cpu' or 'cuda'")

    def base_doc(self) -> dict:
        """What the base-relative arrays of a store are computed with (recorded with the base, checked on rerun)."""
        return {"epsilon": sorted(set(self.intruder_epsilon)), "intruder_topk": self.intruder_topk}

    def content_options(self) -> dict:
        """Options that change what a row holds: a rerun must use the same ones (store attrs keep `top`)."""
        return {"top": self.topk, "include": list(self.include), "exclude": list(self.exclude), "order": self.order}
