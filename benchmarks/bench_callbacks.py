"""Benchmark the training callbacks' cost per training step (specdyn.integrations.core.SeriesSaver, which both
the transformers and the Lightning callback call), side by side in one run on one model:

- bare: the training loop alone;
- plain save: the save a callback replaces, `safetensors.torch.save_file` of the state dict at the same steps;
- specdyn save: SeriesSaver.save at the same steps, plus its poll() on every step;
- specdyn save + analyze: the same, with `specdyn analyze` running in the background process.

Target: a save step costs no more than the plain save it replaces (ratio <= 1, within noise), and steps without
a save cost what bare steps cost. On 2 cores the background analysis (niced, one thread) still competes for CPU;
the last row measures that.

    python benchmarks/bench_callbacks.py [--steps 200] [--saves 20] [--width 1024]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from specdyn.integrations.core import SeriesSaver, schedule  # noqa: E402


def model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def run(mode: str, steps: int, saves: list[int], width: int, folder: Path) -> tuple[list[float], list[float]]:
    """(step times of save steps, step times of the other steps), in seconds."""
    net = model(width)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(64, width), torch.randint(0, 10, (64,))
    saver = None
    if mode.startswith("specdyn"):
        saver = SeriesSaver(folder / mode, analyze=mode.endswith("analyze"))
        saver.steps = saves
        folder.joinpath(mode).mkdir(parents=True, exist_ok=True)
    plain_dir = folder / "plain"
    plain_dir.mkdir(parents=True, exist_ok=True)
    save_t, other_t = [], []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        is_save = step in saves
        if mode == "plain" and is_save:
            save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()},
                      str(plain_dir / f"step_{step:06d}.safetensors"))  # fmt: skip
        elif saver is not None:
            if saver.wants(step):
                saver.save(step, net)
            saver.poll()
        (save_t if is_save else other_t).append(time.perf_counter() - t0)
    if saver is not None:
        t0 = time.perf_counter()
        saver.finish()
        if saver.analyze:
            print(f"  (waited {time.perf_counter() - t0:.1f} s after training for the last analysis)", file=sys.stderr)
    return save_t, other_t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--saves", type=int, default=20)
    ap.add_argument("--width", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(1)
    saves = [s for s in schedule(a.steps, log_spaced=a.saves) if s > 0]
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for mode in ("bare", "plain", "specdyn", "bare", "plain", "specdyn", "specdyn+analyze"):
            s, o = run(mode, a.steps, saves, a.width, Path(tmp) / f"{mode}-{len(rows)}")
            rows.setdefault(mode, ([], []))
            rows[mode][0].extend(s)
            rows[mode][1].extend(o)
    bare = med(rows["bare"][1])
    plain_extra = med(rows["plain"][0]) - bare
    params = sum(p.numel() for p in model(a.width).parameters())
    print(f"{params / 1e6:.1f}M parameters ({params * 4 / 2**20:.0f} MiB), {a.steps} steps, {len(saves)} saves; "
          f"bare step {bare * 1e3:.1f} ms (median)")  # fmt: skip
    print("| run | median save step (ms) | extra per save (ms) | vs plain save | median other step (ms) | vs bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in ("plain", "specdyn", "specdyn+analyze"):
        s, o = rows[mode]
        extra = med(s) - bare
        print(f"| {mode} | {med(s) * 1e3:.1f} | {extra * 1e3:.1f} | {extra / plain_extra:.2f} | "
              f"{med(o) * 1e3:.1f} | {med(o) / bare:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
