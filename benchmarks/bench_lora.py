"""`specdyn analyze --base` on a LoRA series (r = 16 on q_proj and v_proj) over Llama-2-7B-shaped matrices: time per
checkpoint against a full-weight checkpoint of the same matrices, and peak RSS against the memory bound.

The base is bench_7b.py's synthetic bf16 Llama-2-7B (synthetic.llama2_7b), cut to its first --layers layers (all 32
with --layers 32: 13.5 GB); the adapters are peft-layout folders `checkpoint-N/adapter_model.safetensors` +
`adapter_config.json` with random A and B. Three runs, each in a fresh process and a new store:

1. the base as a full-weight checkpoint (one row, every matrix's SVD): the cost of a full checkpoint;
2. the LoRA series' first checkpoint with --base: every matrix once (untouched ones from the base), plus the
   base's left singular bases of the adapted matrices (once per run, for the intruders);
3. the whole LoRA series with --base: as 2, then only the adapted matrices per later checkpoint (untouched rows
   filled from the first computation). (3 − 2) / (checkpoints − 1) is the cost of a later checkpoint.

    python benchmarks/bench_lora.py                  # layer 0: q, v adapted, k, o, gate, up, down untouched
    python benchmarks/bench_lora.py --layers 4 --checkpoints 5
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import CPU, HEADS, llama2_7b, run_child, write_checkpoint  # noqa: E402


def write_adapters(run: Path, shapes: dict, layers: int, checkpoints: int, rank: int, seed: int = 1) -> None:
    """peft-layout adapter folders (keys `base_model.model.<module>.lora_A.weight`, `lora_B.weight`)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    for c in range(1, checkpoints + 1):
        folder = run / f"checkpoint-{10 * c}"
        if (folder / "adapter_model.safetensors").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i in range(layers):
            for x in "qv":
                module = f"model.layers.{i}.self_attn.{x}_proj"
                m, n = shapes[module + ".weight"]
                tensors[f"base_model.model.{module}.lora_A.weight"] = (rng.standard_normal((rank, n)) / n**0.5).astype(
                    np.float32
                )
                tensors[f"base_model.model.{module}.lora_B.weight"] = (
                    rng.standard_normal((m, rank)) * 1e-3 * c
                ).astype(np.float32)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
                  "base_model_name_or_path": None}  # fmt: skip
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10 * c}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "specdyn-lora-bench")
    ap.add_argument("--layers", type=int, default=1, help="layers of the 7B shape kept (32: all)")
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--div", type=int, default=1, help="divide every dimension by this (a loaded machine): 4 gives "
                    "1024 x 2752 matrices")  # fmt: skip
    ap.add_argument("--svd-route", default="gram_topk", help="pinned in every run: no route measurement timed")
    args = ap.parse_args()
    layers = tuple(f"model.layers.{i}." for i in range(args.layers))
    shapes = {n: tuple(d // args.div for d in s) for n, s in llama2_7b().items() if n.startswith(layers)}
    where = args.dir / f"div{args.div}-layers{args.layers}"
    base = write_checkpoint(where / "base" / "step_0.safetensors", shapes, HEADS["llama-2-7b"] // args.div)
    run = where / "run"
    write_adapters(run, shapes, args.layers, args.checkpoints, args.rank)
    matrices = [n for n, s in shapes.items() if len(s) == 2]
    largest = max(matrices, key=lambda n: shapes[n][0] * shapes[n][1])
    bound = shapes[largest][0] * shapes[largest][1] * 8 + 2**30
    tmp = Path(tempfile.mkdtemp(prefix="specdyn-lora-store-"))
    try:
        route = ["--svd-route", args.svd_route]
        full = run_child(["analyze", str(base.parent), "--out", str(tmp / "full.zarr"), "--quiet", *route]), CPU["last"]
        common = ["--quiet", "--base", str(base), *route]
        first = run_child(["analyze", str(run), *common, "--steps", ":10", "--out", str(tmp / "a.zarr")]), CPU["last"]
        whole = run_child(["analyze", str(run), *common, "--out", str(tmp / "b.zarr")]), CPU["last"]
    finally:
        shutil.rmtree(tmp)
    later = args.checkpoints - 1
    size = "" if args.div == 1 else f", every dimension / {args.div}"
    print(f"base: {base} ({base.stat().st_size / 1e9:.2f} GB), {len(matrices)} Llama-2-7B-shaped matrices{size} "
          f"({args.layers} layer{'s' * (args.layers > 1)}), LoRA r={args.rank} on q_proj, v_proj "
          f"({2 * args.layers} matrices), {args.checkpoints} checkpoints; {os.cpu_count()} cores")  # fmt: skip
    print(f"full-weight checkpoint (1 row): {full[0][0]:.1f} s wall, {full[1]:.1f} s CPU, peak RSS "
          f"{full[0][1] / 2**30:.2f} GiB")  # fmt: skip
    print(f"LoRA first checkpoint with --base (every matrix + base bases): {first[0][0]:.1f} s wall, {first[1]:.1f} s "
          f"CPU, peak RSS {first[0][1] / 2**30:.2f} GiB")  # fmt: skip
    per = (whole[1] - first[1]) / later
    print(f"LoRA whole series with --base: {whole[0][0]:.1f} s wall, {whole[1]:.1f} s CPU, peak RSS "
          f"{whole[0][1] / 2**30:.2f} GiB; a later checkpoint: {per:.1f} s CPU = {per / full[1]:.3f} of a full "
          f"checkpoint's ({(whole[0][0] - first[0][0]) / later:.1f} s wall)")  # fmt: skip
    peak = max(full[0][1], first[0][1], whole[0][1])
    print(f"bound ({largest} {shapes[largest][0]}x{shapes[largest][1]} float64 + 1 GiB) = {bound / 2**30:.2f} GiB; "
          f"peak {peak / 2**30:.2f} GiB = {peak / bound:.2f} of it")  # fmt: skip


if __name__ == "__main__":
    main()
