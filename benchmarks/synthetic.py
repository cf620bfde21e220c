"""Synthetic checkpoints shaped like real models, written tensor by tensor (a 13.5 GB file never sits in memory),
and timing helpers shared by bench_7b.py, bench_scale.py and bench_gpu.py."""

import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOP = 64


def llama2_7b() -> dict[str, tuple[int, ...]]:
    d, ff, vocab, layers = 4096, 11008, 32000, 32
    shapes = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + f"self_attn.{x}_proj.weight": (d, d) for x in "qkvo"}
        shapes |= {p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d)}
        shapes |= {p + "mlp.down_proj.weight": (d, ff)}
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
    return shapes | {"model.norm.weight": (d,), "lm_head.weight": (vocab, d)}


def pythia(d: int, layers: int, ff: int | None = None, vocab: int = 50304) -> dict[str, tuple[int, ...]]:
    """GPT-NeoX layout (Pythia): fused query_key_value, dense, h_to_4h, 4h_to_h; untied embed_in/embed_out."""
    ff = ff or 4 * d
    shapes = {"gpt_neox.embed_in.weight": (vocab, d)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "attention.query_key_value.weight": (3 * d, d),
            p + "attention.dense.weight": (d, d),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.dense_h_to_4h.weight": (ff, d),
            p + "mlp.dense_4h_to_h.weight": (d, ff),
        }
    return shapes | {"gpt_neox.final_layer_norm.weight": (d,), "embed_out.weight": (vocab, d)}


MODELS = {
    "pythia-160m": lambda: pythia(768, 12),
    "pythia-410m": lambda: pythia(1024, 24),
    "pythia-1b": lambda: pythia(2048, 16, ff=8192),
    "llama-2-7b": llama2_7b,
}
HEADS = {"pythia-160m": 12, "pythia-410m": 16, "pythia-1b": 8, "llama-2-7b": 32}


def _write_bf16(f, rng, shape, block=1 << 26) -> None:
    """I.i.d. random bfloat16 weights, symmetric about 0 with magnitudes in [2^-7, 2^-5): random sign, 7 random
    mantissa bits and one random exponent bit, from random bytes (a Gaussian draw would make writing 13.5 GB take
    a quarter of an hour here). A matrix of such entries has the same Marchenko-Pastur bulk as a Gaussian one,
    so the SVD routes see realistic, full-rank spectra."""
    n = int(np.prod(shape))
    for i in range(0, n, block):
        bits = np.frombuffer(bytearray(rng.bytes(2 * min(block, n - i))), dtype=np.uint16)
        bits &= 0x80FF
        bits |= 0x3C00
        f.write(bits.tobytes())


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], heads: int, seed: int = 0) -> Path:
    """A bf16 safetensors file (header written first, then each tensor in turn); kept if it already exists."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    meta = {"step": "0", "config": json.dumps({"n_heads": heads}), "param_order": json.dumps(list(shapes))}
    raw = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    t0 = time.perf_counter()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            _write_bf16(f, rng, shape)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


CPU = {}  # "last": CPU seconds (user + sys) of the last run_child


def run_child(args: list[str], env=None) -> tuple[float, int]:
    """Run `python -m specdyn ARGS` in a fresh process: (wall seconds, its own peak RSS in bytes); its CPU
    seconds in CPU["last"] (steadier than wall time on a shared machine)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "specdyn", *args], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    CPU["last"] = usage.ru_utime + usage.ru_stime
    if proc.returncode:
        raise SystemExit(f"specdyn {' '.join(args)} exited {proc.returncode}")
    return wall, usage.ru_maxrss * 1024


def gram_eigh_floor(W: np.ndarray, top: int = TOP) -> None:
    """Today's floor: the full float64 Gram eigendecomposition, then the top vectors of the other side."""
    wide = W.shape[0] < W.shape[1]
    A = W.T if wide else W
    G = np.zeros((A.shape[1], A.shape[1]))
    step = max(1, (1 << 22) // A.shape[1])
    for i in range(0, A.shape[0], step):  # blocked like specdyn's, so the floor's memory is comparable
        blk = A[i : i + step].astype(np.float64)
        G += blk.T @ blk
    lam, Q = np.linalg.eigh(G)
    small = Q[:, ::-1][:, :top]
    s = np.sqrt(np.clip(lam[::-1][:top], 1e-300, None))
    (A @ small.astype(np.float32)) / s.astype(np.float32)


def matrices(path: Path, names: list[str]):
    """Yield (name, float32 matrix) from a safetensors file, one at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in names:
            yield name, f.get_tensor(name).to(torch.float32).numpy()


def self_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
