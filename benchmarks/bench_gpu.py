"""`specdyn analyze --device cuda` against the CPU path and against plain torch one matrix at a time.

Run on a machine with one CUDA GPU, as one command (under 5 minutes with the defaults):

    python benchmarks/bench_gpu.py [--dir /tmp/specdyn-gpu] [--gpt2-checkpoints 4] [--layers 8] [--cpu-layers 2]

Two series, written once to --dir by child processes:
- GPT-2 small shapes (bench_analyze.py's series, --gpt2-checkpoints checkpoints of 50 matrices);
- a Llama-2-7B-shaped bf16 checkpoint with the first --layers of its 32 layers (plus both 32000x4096
  embeddings; --layers 32 is the whole 13.5 GB model).
For each, per checkpoint: (a) specdyn analyze --device cuda in a fresh process (batched float64 Gram eigh),
(b) specdyn analyze on the CPU (all cores; on the 7B shape only --cpu-layers layers, scaled per matrix by the
floor's per-shape cost), (c) plain torch, one matrix at a time on the GPU: torch.linalg.svd in float32, and the
same float64 Gram eigh as (a) unbatched; and the accuracy of (a) against float64 gesdd on a few matrices.
Figures are printed and, when $OUT is set, written to $OUT/bench_gpu.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import HEADS, MODELS, TOP, run_child, write_checkpoint  # noqa: E402


def seven_b(layers: int) -> dict:
    shapes = MODELS["llama-2-7b"]()
    keep = {f"model.layers.{i}." for i in range(layers)}
    return {k: s for k, s in shapes.items() if not k.startswith("model.layers.") or any(k.startswith(p) for p in keep)}


def write_all(args):
    import bench_analyze

    bench_analyze.write_series(args.dir / "gpt2", args.gpt2_checkpoints)
    write_checkpoint(
        args.dir / f"llama7b-{args.layers}l" / "step_0.safetensors", seven_b(args.layers), HEADS["llama-2-7b"]
    )


def timed_analyze(run: Path, device: str, include=()) -> tuple[float, int]:
    store = Path(tempfile.mkdtemp(prefix="specdyn-gpu-")) / "s.zarr"
    cli = ["analyze", str(run), "--out", str(store), "--quiet", "--device", device]
    for p in include:
        cli += ["--include", p]
    try:
        return run_child(cli)
    finally:
        shutil.rmtree(store.parent)


def plain_torch(paths: list[Path], names: list[str]) -> dict:
    """One matrix at a time on the GPU: float32 torch.linalg.svd, and float64 Gram eigh (+ top vectors)."""
    import torch
    from safetensors import safe_open

    out = {"svd_f32": 0.0, "gram_eigh_f64": 0.0}
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            for n in names:
                W = f.get_tensor(n).float().cuda()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                U, s, Vh = torch.linalg.svd(W, full_matrices=False)
                U[:, :TOP].cpu(), s.cpu(), Vh[:TOP].cpu()
                torch.cuda.synchronize()
                out["svd_f32"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                A = (W.T if W.shape[0] < W.shape[1] else W).double()
                lam, Q = torch.linalg.eigh(A.T @ A)
                small = Q.flip(-1)[:, :TOP]
                ((A @ small) / lam.flip(-1)[:TOP].clamp_min(1e-300).sqrt()).float().cpu()
                lam.cpu()
                torch.cuda.synchronize()
                out["gram_eigh_f64"] += time.perf_counter() - t0
    return out


def accuracy(path: Path, names: list[str]) -> dict:
    """specdyn's batched device route against float64 gesdd (numpy) on a few matrices."""
    import numpy as np
    import torch
    from safetensors import safe_open

    from specdyn.spectral.gpu import BatchedGram

    worst = {"sv": 0.0, "subspace": 0.0}
    with safe_open(str(path), framework="pt") as f:
        Ws = [f.get_tensor(n).float().numpy() for n in names]
    for W, sp in zip(Ws, BatchedGram(TOP, "cuda")(Ws)):
        U64, s64, _ = np.linalg.svd(W.astype(np.float64), full_matrices=False)
        worst["sv"] = max(worst["sv"], float(np.max(np.abs(sp.s - s64)) / s64[0]))
        cos = np.linalg.svd(sp.U.T.astype(np.float64) @ U64[:, :TOP], compute_uv=False)
        worst["subspace"] = max(worst["subspace"], float(1 - cos.min()))
    torch.cuda.empty_cache()
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "specdyn-gpu")
    ap.add_argument("--gpt2-checkpoints", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8, help="layers of the 7B shape written and analyzed on the GPU")
    ap.add_argument("--cpu-layers", type=int, default=2, help="layers of the 7B shape analyzed on the CPU")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:
        write_all(args)
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
    cmd = [sys.executable, __file__, "--write-only", "--dir", str(args.dir), "--gpt2-checkpoints"]
    subprocess.run([*cmd, str(args.gpt2_checkpoints), "--layers", str(args.layers)], check=True)
    gpt2, big = args.dir / "gpt2", args.dir / f"llama7b-{args.layers}l"
    res = {"device": torch.cuda.get_device_name(0), "cpu_cores": os.cpu_count()}

    # GPT-2 small: every checkpoint on both paths
    import bench_analyze

    n2 = args.gpt2_checkpoints
    names2 = [k for k, s in bench_analyze.gpt2_shapes().items() if len(s) == 2]
    gpu_s, gpu_rss = timed_analyze(gpt2, "cuda")
    cpu_s, _ = timed_analyze(gpt2, "cpu")
    plain = plain_torch(sorted(gpt2.glob("*.safetensors")), names2)
    res["gpt2"] = {
        "checkpoints": n2,
        "cuda_per_ckpt_s": gpu_s / n2,
        "cpu_per_ckpt_s": cpu_s / n2,
        "plain_torch_per_ckpt_s": {k: v / n2 for k, v in plain.items()},
        "cuda_peak_rss": gpu_rss,
    }

    # 7B shape: GPU on every layer written; the CPU on --cpu-layers, scaled per matrix (all layers cost the same)
    shapes = seven_b(args.layers)
    names7 = [k for k, s in shapes.items() if len(s) == 2]
    ckpt = big / "step_0.safetensors"
    gpu7, rss7 = timed_analyze(big, "cuda")
    cpu_inc = ["model.embed_tokens.weight", "lm_head.weight", *[f"model.layers.{i}.*" for i in range(args.cpu_layers)]]
    cpu7, _ = timed_analyze(big, "cpu", cpu_inc)
    per_layer_cpu = None
    if args.cpu_layers:
        emb_inc = ["model.embed_tokens.weight", "lm_head.weight"]
        cpu_emb, _ = timed_analyze(big, "cpu", emb_inc)
        per_layer_cpu = (cpu7 - cpu_emb) / args.cpu_layers
    plain7 = plain_torch([ckpt], names7)
    res["llama7b"] = {
        "layers": args.layers,
        "matrices": len(names7),
        "cuda_s": gpu7,
        "cuda_peak_rss": rss7,
        "cpu_s_for_cpu_layers": cpu7,
        "cpu_layers": args.cpu_layers,
        "cpu_s_scaled_to_all_layers": (cpu7 + per_layer_cpu * (args.layers - args.cpu_layers))
        if per_layer_cpu
        else None,
        "cpu_s_scaled_to_32_layers": (cpu7 + per_layer_cpu * (32 - args.cpu_layers)) if per_layer_cpu else None,
        "cuda_s_scaled_to_32_layers": gpu7 * (2 + 7 * 32) / len(names7),
        "plain_torch_s": plain7,
        "accuracy_vs_float64_gesdd": accuracy(ckpt, ["model.embed_tokens.weight", *names7[1:6]]),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.json").write_text(text)


if __name__ == "__main__":
    main()
