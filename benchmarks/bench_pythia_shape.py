"""Estimate `specdyn analyze` time and store size per checkpoint for a Pythia-70m series, from a same-shaped
synthetic one (random weights; the real download cannot run here).

Writes a tiny hub cache in huggingface_hub's layout (blobs/, snapshots/<commit>/ symlinks, refs/stepN) holding
1-2 revisions shaped exactly like EleutherAI/pythia-70m (GPT-NeoX, 6 layers, d=512, 8 heads, MLP 2048, untied
50304x512 embed_in and embed_out, float16 as published), then times `specdyn analyze` on the repo folder:
the first revision (which includes measuring the SVD routes once per shape on a fresh cache), then the second
one added incrementally. Prints the time and the store's growth per checkpoint.

    nice python benchmarks/bench_pythia_shape.py [--dir /tmp/specdyn-pythia] [--checkpoints 2]
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

PYTHIA_70M = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                  intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
                  tie_word_embeddings=False)  # fmt: skip


def shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of GPTNeoXForCausalLM(pythia-70m config), built on the meta device (no memory)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_70M))
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out["embed_out.weight"] = out.pop("lm_head.weight")  # the name Pythia's files use
    return out


def write_revision(cache: Path, step: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    repo = cache / "models--bench--pythia-70m-shaped"
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(s, generator=g) * 0.02).half() for k, s in shapes().items()}
    staging = cache / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    save_file(sd, staging / "model.safetensors", {"format": "pt"})
    (staging / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
                                                     "torch_dtype": "float16", **PYTHIA_70M}))  # fmt: skip
    commit = hashlib.sha1(f"step{step}".encode()).hexdigest()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in staging.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.move(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / f"step{step}").write_text(commit)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def analyze(repo: Path, store: Path, env) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one `specdyn analyze` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "specdyn", "analyze", str(repo), "--out", str(store), "-q"]
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/specdyn-pythia"))
    ap.add_argument("--checkpoints", type=int, default=2, choices=(1, 2))
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    cache, store = args.dir / "hub", args.dir / "pythia.zarr"
    env = {**os.environ, "SPECDYN_CACHE_DIR": str(args.dir / "specdyn-cache")}  # a fresh SVD route cache
    repo = cache / "models--bench--pythia-70m-shaped"
    print(f"tensors: {len(shapes())}, matrices (ndim >= 2): {sum(len(s) >= 2 for s in shapes().values())}")
    times, sizes = [], []
    for i, step in enumerate((1000, 2000)[: args.checkpoints]):
        write_revision(cache, step, seed=i)
        times.append(analyze(repo, store, env))
        sizes.append(du(store))
    ckpt = du(repo / "blobs") / args.checkpoints
    print(f"checkpoint (float16 safetensors): {ckpt / 2**20:.0f} MiB")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"analyze, first revision (incl. measuring SVD routes on a fresh cache): wall {times[0][0]:.1f} s, "
          f"CPU {times[0][1]:.1f} s")  # fmt: skip
    if len(times) > 1:
        print(f"analyze, one more revision (routes known, incremental): wall {times[1][0]:.1f} s, "
              f"CPU {times[1][1]:.1f} s")  # fmt: skip
    print(f"store after 1 checkpoint: {sizes[0] / 2**20:.1f} MiB")
    if len(sizes) > 1:
        print(f"store growth per checkpoint: {(sizes[1] - sizes[0]) / 2**20:.1f} MiB")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
