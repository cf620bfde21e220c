"""Runs grouped into conditions (seeds of one setting): parsing `--group NAME=GLOB` and group files, and the mean
and standard deviation (ddof 0, as the paper's merge scripts) over a condition's seeds with steps aligned by value
(docs/method.md §5)."""

from __future__ import annotations

import glob as globlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specdyn.errors import EXIT_USAGE, SpecdynError


@dataclass
class Condition:
    """A named group of stores (one per seed)."""

    name: str
    stores: list


def _expand(pattern: str, base: Path, what: str) -> list[Path]:
    p = Path(pattern)
    full = p if p.is_absolute() else base / p
    hits = sorted(Path(h) for h in globlib.glob(str(full))) if any(c in pattern for c in "*?[") else [full]
    hits = [h for h in hits if h.exists()]
    if not hits:
        raise SpecdynError(f"{what}: {pattern!r} matches no run dir or store", code=EXIT_USAGE)
    return hits


def parse_group_args(specs: list[str], base: Path | None = None) -> dict[str, list[Path]]:
    """`NAME=GLOB[,GLOB...]` strings (repeatable; a name given twice collects both) -> {name: [paths]}."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, patterns = spec.partition("=")
        if not sep or not name.strip() or not patterns.strip():
            raise SpecdynError(
                f"--group {spec!r}: expected NAME=GLOB (e.g. --group wd1='runs/wd1-s*')", code=EXIT_USAGE
            )
        for pat in patterns.split(","):
            out.setdefault(name.strip(), []).extend(_expand(pat.strip(), base or Path.cwd(), f"--group {name}"))
    return out


def read_group_file(path: Path) -> dict[str, list[Path]]:
    """A TOML or JSON file naming groups: `{"groups": {"wd1": ["runs/wd1-s*"], ...}}` or the inner table alone
    (TOML: `[groups]` then `wd1 = ["runs/wd1-s*"]`). Patterns are relative to the file's folder."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() == ".toml":
            import tomllib

            doc = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except OSError as e:
        raise SpecdynError(f"{path}: cannot read the group file ({e.strerror})", code=EXIT_USAGE) from None
    except ValueError as e:
        raise SpecdynError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({e})", code=EXIT_USAGE) from None
    table = doc.get("groups", doc) if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise SpecdynError(f'{path}: expected {{"groups": {{"NAME": ["GLOB", ...]}}}}', code=EXIT_USAGE)
    out = {}
    for name, patterns in table.items():
        patterns = [patterns] if isinstance(patterns, str) else patterns
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise SpecdynError(f"{path}: group {name!r} must list path patterns (strings)", code=EXIT_USAGE)
        out[name] = [h for p in patterns for h in _expand(p, path.parent, f"{path}: group {name}")]
    return out


def open_conditions(groups: dict[str, list[Path]]) -> list[Condition]:
    from specdyn.store import SpectralStore, resolve_store

    return [Condition(name, [SpectralStore.open(resolve_store(p)) for p in paths]) for name, paths in groups.items()]


def conditions_from_args(group: list[str] | None, groups_file: Path | None) -> list[Condition]:
    """The conditions of `--groups FILE` then `--group NAME=GLOB ...` (a name in both collects both), opened."""
    named = read_group_file(groups_file) if groups_file else {}
    for name, paths in parse_group_args(group or []).items():
        named.setdefault(name, []).extend(paths)
    return open_conditions(named)


def seed_mean(
    curves: list[tuple[np.ndarray, np.ndarray]], where: str, interpolate: bool = False, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) over seeds' curves [(steps, y), ...], aligned by step value.

    Equal step grids are required unless `interpolate`: then every curve is interpolated linearly onto the first
    seed's steps within the range all seeds cover. NaN values are left out of that step's mean and std."""
    names = names or [f"seed {i + 1}" for i in range(len(curves))]
    pairs = [(n, (np.asarray(s, dtype=float), np.asarray(y, dtype=float))) for n, (s, y) in zip(names, curves)]
    pairs = [(n, c) for n, c in pairs if len(c[0])]
    names, curves = [n for n, _ in pairs], [c for _, c in pairs]
    if not curves:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    grid = curves[0][0]
    same = all(len(s) == len(grid) and np.array_equal(s, grid) for s, _ in curves)
    if not same:
        if not interpolate:
            k = next(i for i, (s, _) in enumerate(curves) if not (len(s) == len(grid) and np.array_equal(s, grid)))
            other = curves[k][0]
            diff = next(
                (j for j in range(min(len(grid), len(other))) if grid[j] != other[j]), min(len(grid), len(other))
            )
            at = lambda s: f"step {s[diff]:g}" if diff < len(s) else "no step"  # noqa: E731
            desc = (f"{names[0]}: {len(grid)} steps {grid[0]:g}..{grid[-1]:g}, {names[k]}: {len(other)} steps "
                    f"{other[0]:g}..{other[-1]:g}; checkpoint {diff} is {at(grid)} in {names[0]}, {at(other)} in {names[k]}")  # fmt: skip
            raise SpecdynError(
                f"{where}: the seeds' step grids differ ({desc}); pass --interpolate-steps to interpolate them onto "
                "the first seed's steps"
            )
        lo, hi = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
        grid = grid[(grid >= lo) & (grid <= hi)]
        if not len(grid):
            raise SpecdynError(f"{where}: the seeds' step ranges do not overlap; nothing to average")
        ys = np.stack([np.interp(grid, s, y) for s, y in curves])
    else:
        ys = np.stack([y for _, y in curves])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every seed is NaN stays NaN
        return grid, np.nanmean(ys, axis=0), np.nanstd(ys, axis=0, ddof=0)
