"""Which checkpoints of a series to analyze: --every, --log-spaced, --steps (applied in that order)."""

import numpy as np

from specdyn.errors import EXIT_USAGE, SpecdynError


def log_spaced_indices(n: int, count: int) -> list[int]:
    """About `count` indices in [0, n) spaced evenly in log(index + 1), always with the first and the last,
    so early training (where spectra move fastest) is sampled densely."""
    if n <= count:
        return list(range(n))
    idx = np.unique(np.round(np.geomspace(1, n, count)).astype(int) - 1)
    return sorted(set(idx.tolist()) | {0, n - 1})


def parse_steps(spec: str) -> tuple[int | None, int | None]:
    """`a:b` (inclusive, either side may be empty) -> (a, b)."""
    try:
        lo, hi = spec.split(":")
        return (int(lo) if lo.strip() else None, int(hi) if hi.strip() else None)
    except ValueError:
        raise SpecdynError(
            f"--steps {spec!r}: expected `a:b` with integer steps, e.g. `--steps 1000:5000` or `--steps :200`",
            code=EXIT_USAGE,
        ) from None


def subsample(ckpts: list, every=None, log_spaced=None, steps=None, key=lambda c: c.step) -> list:
    """Filter a list of checkpoints ordered by step (`key` gives an item's step)."""
    if steps:
        lo, hi = parse_steps(steps)
        ckpts = [c for c in ckpts if (lo is None or key(c) >= lo) and (hi is None or key(c) <= hi)]
    if every:
        if every < 1:
            raise SpecdynError(f"--every {every}: must be a positive integer", code=EXIT_USAGE)
        keep = set(range(0, len(ckpts), every)) | ({len(ckpts) - 1} if ckpts else set())
        ckpts = [c for i, c in enumerate(ckpts) if i in keep]
    if log_spaced:
        if log_spaced < 2:
            raise SpecdynError(f"--log-spaced {log_spaced}: must be at least 2", code=EXIT_USAGE)
        ckpts = [ckpts[i] for i in log_spaced_indices(len(ckpts), log_spaced)]
    return ckpts
