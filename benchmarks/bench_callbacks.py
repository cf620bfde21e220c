"""Benchmark what the training callbacks cost (specdyn.integrations.core.SeriesSaver, which both the
transformers and the Lightning callback call), side by side in one run on one model.

`--part save` (one training thread): the cost of a save step
- bare: the training loop alone;
- plain save: the save a callback replaces, `safetensors.torch.save_file` of the state dict at the same steps;
- specdyn save: SeriesSaver.save at the same steps, plus its poll() on every step;
- specdyn save + analyze: the same, with `specdyn analyze` running in the background process.
Target: a save step costs no more than the plain save it replaces (ratio <= 1, within noise).

`--part share` (training on every core, so the CPU is the bottleneck): the background analysis's share
- bare, and save + analyze with the analysis at SCHED_IDLE only (share 0, what the callbacks did before) and
  paused during steps with 0.05, 0.1 (the default) and 0.2 of training's time given to it between steps;
  modes interleaved and repeated (`--repeats`).
Printed: training time against bare (the slowdown the analysis costs), the analysis's CPU seconds, how many
checkpoints' metrics reached the logger before the last training step, and how long after its save.

    python benchmarks/bench_callbacks.py [--part save|share|both] [--steps 200] [--saves 20] [--width 1024]
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from specdyn.integrations.core import SeriesSaver, schedule  # noqa: E402

SHARE_MODES = {"idle (share 0)": 0.0, "share 0.05": 0.05, "share 0.1": 0.1, "share 0.2": 0.2}


def model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(mode: str, steps: int, saves: list[int], width: int, folder: Path, batch: int = 64) -> dict:
    """Step times of save steps and other steps (s), the training's wall time, and when metrics arrived."""
    net = model(width)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
    saver = None
    if mode not in ("bare", "plain"):
        saver = SeriesSaver(folder / "run", analyze=mode != "specdyn", share=SHARE_MODES.get(mode, 0.1))
        saver.steps = saves
        saver.run_dir.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_t, other_t, saved_at, arrived = [], [], {}, {}
    cpu0, start = children_cpu(), time.perf_counter()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        is_save = step in saves
        if mode == "plain" and is_save:
            save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()},
                      str(folder / f"step_{step:06d}.safetensors"))  # fmt: skip
        elif saver is not None:
            if saver.wants(step):
                saver.save(step, net)
                saved_at[step] = time.perf_counter()
            for s, _ in saver.poll():
                arrived[s] = time.perf_counter()
        (save_t if is_save else other_t).append(time.perf_counter() - t0)
    train_s = time.perf_counter() - start
    wait = 0.0
    if saver is not None and saver.analyze:
        t0 = time.perf_counter()
        saver.finish()
        wait = time.perf_counter() - t0
    lags = [arrived[s] - saved_at[s] for s in arrived if s in saved_at]
    return {"save": save_t, "other": other_t, "train_s": train_s, "wait_s": wait, "early": len(arrived),
            "saved": len(saved_at), "lag": lags, "cpu": children_cpu() - cpu0,
            "pause_s": saver.pause_seconds if saver else 0.0}  # fmt: skip


def part_save(a, tmp: Path) -> None:
    torch.set_num_threads(1)
    saves = [s for s in schedule(a.steps, log_spaced=a.saves) if s > 0]
    med = statistics.median
    rows: dict[str, tuple[list, list]] = {}
    for i, mode in enumerate(("bare", "plain", "specdyn", "bare", "plain", "specdyn", "share 0.1")):
        r = run(mode, a.steps, saves, a.width, tmp / f"save-{i}")
        rows.setdefault(mode, ([], []))
        rows[mode][0].extend(r["save"])
        rows[mode][1].extend(r["other"])
    bare = med(rows["bare"][1])
    plain_extra = med(rows["plain"][0]) - bare
    params = sum(p.numel() for p in model(a.width).parameters())
    print(f"\n--part save: {params / 1e6:.1f}M parameters ({params * 4 / 2**20:.0f} MiB), one thread, {a.steps} "
          f"steps, {len(saves)} saves; bare step {bare * 1e3:.1f} ms (median)")  # fmt: skip
    print("| run | median save step (ms) | extra per save (ms) | vs plain save | median other step (ms) | vs bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in ("plain", "specdyn", "share 0.1"):
        s, o = rows[mode]
        extra = med(s) - bare
        name = "specdyn save + analyze" if mode == "share 0.1" else mode
        print(f"| {name} | {med(s) * 1e3:.1f} | {extra * 1e3:.1f} | {extra / plain_extra:.2f} | "
              f"{med(o) * 1e3:.1f} | {med(o) / bare:.2f} |")  # fmt: skip


def part_share(a, tmp: Path) -> None:
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    saves = [s for s in schedule(a.steps, log_spaced=a.saves) if s > 0]
    modes = ("bare", *SHARE_MODES)
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(a.repeats):
        for mode in modes:
            results[mode].append(run(mode, a.steps, saves, a.width, tmp / f"share-{rep}-{mode}", batch=a.batch))
            r = results[mode][-1]
            print(f"  {mode}: {r['train_s']:.1f} s, paused {r['pause_s']:.1f} s", file=sys.stderr)
    bare = statistics.median(r["train_s"] for r in results["bare"])
    print(f"\n--part share: training on {threads} threads ({os.cpu_count()} cores), {a.steps} steps, {len(saves)} "
          f"saves, {a.repeats} interleaved repeats; bare training {bare:.1f} s (median)")  # fmt: skip
    print("| analysis | training (s) | vs bare | pauses for the analysis (s) | pauses / training | analysis CPU (s) "
          "| metrics before the last step | median lag (s) | wait after training (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in SHARE_MODES:
        rs = results[mode]
        train = statistics.median(r["train_s"] for r in rs)
        lags = [x for r in rs for x in r["lag"]]
        lag = f"{statistics.median(lags):.1f}" if lags else "-"
        early = "/".join(str(r["early"]) for r in rs) + f" of {rs[0]['saved']}"
        pause = statistics.median(r["pause_s"] for r in rs)
        print(f"| {mode} | {train:.1f} | {train / bare:.2f} | {pause:.1f} | {pause / train:.2f} | "
              f"{statistics.median(r['cpu'] for r in rs):.1f} | {early} | {lag} | "
              f"{statistics.median(r['wait_s'] for r in rs):.1f} |")  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("save", "share", "both"), default="both")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--saves", type=int, default=20)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256, help="batch of --part share (larger: more CPU-bound)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.part in ("save", "both"):
            part_save(a, Path(tmp))
        if a.part in ("share", "both"):
            part_share(a, Path(tmp))


if __name__ == "__main__":
    main()
