"""Science checks: do the shipped sample series show the paper's findings? (issue 5; a table, not a timed test)

For each run: the final val error, the step where val error first drops under 5%, and the mean normalized
effective rank of the non-embedding weight matrices at the first and last checkpoint (effective rank of
`torch.linalg.svdvals`, conv kernels flattened to out x in*kh*kw, read straight from the checkpoints).
Then the paper's claims, each marked held / failed:
  1. modadd with weight decay 1 ends far lower in effective rank than without (ratio < 0.7);
  2. its rank falls around the step where val error drops: both runs lose rank while they memorise, so we
     look at the gap weight decay opens, rank(wd 0) - rank(wd 1), and ask that it reach half its final size
     within a quarter of the run of the step where val error first drops under 5%;
  3. the random-label MLP ends at a higher effective rank than the true-label MLP.

    python benchmarks/science.py                 # the series in sample_checkpoints/
    python benchmarks/science.py --fresh         # also retrain the four runs with the README's commands
    python benchmarks/science.py --trace         # also print the rank and val error at every checkpoint
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specdyn.io import CheckpointReader, discover  # noqa: E402
from specdyn.spectral.matrices import select_matrices  # noqa: E402
from specdyn.spectral.metrics import effective_rank  # noqa: E402

SAMPLES = ROOT / "sample_checkpoints"
# The commands of sample_checkpoints/README.md (without --out), used by --fresh.
COMMANDS = {
    "modadd-wd1": [
        "modadd",
        "--weight-decay",
        "1.0",
        "--save-every",
        "200",
        "--save-dtype",
        "bfloat16",
        "--threads",
        "1",
    ],
    "modadd-wd0": [
        "modadd",
        "--weight-decay",
        "0",
        "--save-every",
        "200",
        "--save-dtype",
        "bfloat16",
        "--threads",
        "1",
    ],
    "mlp-true": ["mlp", "--save-every", "300", "--save-dtype", "bfloat16", "--threads", "1"],
    "mlp-random": ["mlp", "--random-labels", "--save-every", "300", "--save-dtype", "bfloat16", "--threads", "1"],
}
GROK_ERR = 0.05


def mean_ranks(run_dir: Path) -> tuple[list[int], list[float]]:
    """Steps and the mean normalized effective rank of the non-embedding matrices at every checkpoint."""
    steps, ranks = [], []
    for ckpt in discover(run_dir):
        with CheckpointReader(ckpt) as reader:
            shapes = {n: tuple(reader.shape(n)) for n in reader.names()}
            specs = [s for s in select_matrices(shapes, where=str(ckpt.path)) if s.kind != "embedding"]
            values = []
            for spec in specs:
                W = torch.from_numpy(spec.flatten(reader.tensor(spec.name)))
                values.append(float(effective_rank(torch.linalg.svdvals(W.double()).numpy())))
        steps.append(ckpt.step)
        ranks.append(float(np.mean(values)))
    return steps, ranks


def summarize(name: str, run_dir: Path) -> dict:
    history = json.loads((run_dir / "run.json").read_text())["history"]
    steps, ranks = mean_ranks(run_dir)
    errs = {h["step"]: h.get("val_err") for h in history}
    crossed = next((h["step"] for h in history if h.get("val_err", 1.0) < GROK_ERR), None)
    # where the rank has made half of its fall from its peak to its final value
    peak = int(np.argmax(ranks))
    half = ranks[peak] - (ranks[peak] - ranks[-1]) / 2
    half_step = next((s for s, r in zip(steps[peak:], ranks[peak:]) if r <= half), steps[-1])
    return {"run": name, "dir": str(run_dir), "checkpoints": len(steps), "final_step": steps[-1],
            "final_val_err": history[-1].get("val_err"), "final_train_err": history[-1].get("train_err"),
            "grok_step": crossed, "rank_first": ranks[0], "rank_last": ranks[-1], "rank_half_step": half_step,
            "trace": [(s, r, errs.get(s)) for s, r in zip(steps, ranks)]}  # fmt: skip


def fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    head = (
        f"{'run':<12} {'ckpts':>5} {'steps':>6} {'train err':>9} {'val err':>8} {'val<5% at':>9} "
        f"{'erank first':>11} {'erank last':>10} {'rank half-fall at':>17}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:<12} {r['checkpoints']:>5} {r['final_step']:>6} {fmt(r['final_train_err']):>9} "
              f"{fmt(r['final_val_err']):>8} {fmt(r['grok_step'], 'd'):>9} {r['rank_first']:>11.3f} "
              f"{r['rank_last']:>10.3f} {r['rank_half_step']:>17d}")  # fmt: skip


def claims(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    by = {r["run"]: r for r in rows}
    out = []
    wd1, wd0 = by.get("modadd-wd1"), by.get("modadd-wd0")
    if wd1 and wd0:
        ratio = wd1["rank_last"] / wd0["rank_last"]
        out.append(("wd-1 ends far lower in effective rank than wd-0 (ratio < 0.7)", ratio < 0.7, f"ratio {ratio:.3f}"))
        g, span = wd1["grok_step"], wd1["final_step"]
        gap = {s: r0 - r1 for (s, r1, _), (s0, r0, _) in zip(wd1["trace"], wd0["trace"]) if s == s0}
        final_gap = gap[max(gap)] if gap else 0.0
        h = next((s for s in sorted(gap) if gap[s] >= final_gap / 2), None)
        if g is None or h is None or final_gap <= 0:
            out.append(("wd-1 rank falls around the grokking step", False,
                        f"grok step {g}, final rank gap {final_gap:.3f}"))  # fmt: skip
        else:
            out.append(
                (
                    "wd-1 rank falls around the grokking step",
                    abs(h - g) <= span / 4,
                    f"the wd-0 minus wd-1 rank gap reaches half its final {final_gap:.3f} at step {h}; "
                    f"val err < 5% at step {g} (tolerance {span // 4})",
                )
            )
        out.append(
            (
                "wd-1 groks (val err < 5%) and wd-0 does not",
                g is not None and wd0["grok_step"] is None,
                f"wd-1 final val err {fmt(wd1['final_val_err'])}, wd-0 {fmt(wd0['final_val_err'])}",
            )
        )
    rnd, true = by.get("mlp-random"), by.get("mlp-true")
    if rnd and true:
        out.append(("random-label MLP ends at higher effective rank than true-label MLP",
                    rnd["rank_last"] > true["rank_last"],
                    f"random {rnd['rank_last']:.3f} vs true {true['rank_last']:.3f}"))  # fmt: skip
    return out


def print_claims(rows: list[dict]) -> None:
    for text, ok, detail in claims(rows):
        mark = "held  " if ok else ("failed" if ok is False else "n/a   ")
        print(f"  [{mark}] {text}: {detail}")


def print_trace(rows: list[dict]) -> None:
    for r in rows:
        print(f"\n{r['run']}: step, mean effective rank, val err")
        for s, rank, err in r["trace"]:
            print(f"  {s:>6} {rank:.3f} {fmt(err)}")


def fresh_rows(workdir: Path) -> list[dict]:
    rows = []
    for name, args in COMMANDS.items():
        out = workdir / name
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "specdyn", "train", *args, "--out", str(out), "--quiet"],
                       check=True, cwd=ROOT)  # fmt: skip
        row = summarize(name, out)
        row["seconds"] = time.perf_counter() - t0
        print(f"  {name}: trained in {row['seconds']:.0f}s", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, default=SAMPLES, help="folder holding the four sample series")
    ap.add_argument("--fresh", action="store_true", help="also retrain the four runs (the README commands)")
    ap.add_argument("--trace", action="store_true", help="print rank and val error at every checkpoint")
    args = ap.parse_args()

    rows = [summarize(name, args.samples / name) for name in COMMANDS if (args.samples / name / "run.json").exists()]
    if rows:
        print_table(rows, f"shipped series ({args.samples})")
        print_claims(rows)
        if args.trace:
            print_trace(rows)
    else:
        print(f"no sample series under {args.samples}")
    if args.fresh:
        with tempfile.TemporaryDirectory() as tmp:
            print("\nretraining the four runs with the README's commands ...", flush=True)
            fresh = fresh_rows(Path(tmp))
            print_table(fresh, "fresh runs")
            print_claims(fresh)
            if args.trace:
                print_trace(fresh)


if __name__ == "__main__":
    main()
