"""Mixtures of experts (transformers 5): each expert's matrices come out of the experts module's stacks
(`experts.gate_up_proj` (E, 2I, H): [gate; up] per expert, `experts.down_proj` (E, H, I); GPT-OSS stores them
in x out with gate and up interleaved, as its experts module's `is_transposed` / `is_concatenated` say), or from
per-expert tensors as transformers saves them (`block_sparse_moe.experts.3.w1`, `mlp.experts.3.gate_proj`).
The router (`mlp.gate`, GPT-OSS `mlp.router`; Qwen2-MoE's `shared_expert_gate` too) reads the MLP's input; each
expert pairs within itself (gate, up -> down); a shared expert (Qwen2-MoE, DeepSeek) or a dense MLP (the layers
Qwen3-MoE and DeepSeek keep dense) is the block's MLP. DeepSeek's multi-head latent attention has no separate
q/k/v: only its output projection is paired."""

from specdyn.arch.base import Attention, Family, Stack
from specdyn.arch.llama import ATTENTION

MIXTRAL = Family(
    name="mixtral",
    model_types=("mixtral", "qwen3_moe", "olmoe"),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=ATTENTION,
            mlp_in=("mlp.gate_proj", "mlp.up_proj"),
            mlp_out="mlp.down_proj",
            embed=("embed_tokens",),
            router=("mlp.gate",),
            experts="mlp.experts",
        ),
    ),
    heads_chains=(("lm_head",),),
)

QWEN2_MOE = Family(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=ATTENTION,
            mlp_in=("mlp.gate_proj|mlp.shared_expert.gate_proj", "mlp.up_proj|mlp.shared_expert.up_proj"),
            mlp_out="mlp.down_proj|mlp.shared_expert.down_proj",
            embed=("embed_tokens",),
            router=("mlp.gate", "mlp.shared_expert_gate"),
            experts="mlp.experts",
        ),
    ),
    heads_chains=(("lm_head",),),
)

DEEPSEEK = Family(
    name="deepseek",
    model_types=("deepseek_v2", "deepseek_v3"),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(Attention(o="self_attn.o_proj"),),
            mlp_in=("mlp.gate_proj|mlp.shared_experts.gate_proj", "mlp.up_proj|mlp.shared_experts.up_proj"),
            mlp_out="mlp.down_proj|mlp.shared_experts.down_proj",
            embed=("embed_tokens",),
            router=("mlp.gate",),
            experts="mlp.experts",
        ),
    ),
    heads_chains=(("lm_head",),),
)

GPT_OSS = Family(
    name="gpt_oss",
    model_types=("gpt_oss",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=ATTENTION,
            mlp_in=(),
            mlp_out="",
            embed=("embed_tokens",),
            router=("mlp.router",),
            experts="mlp.experts",
        ),
    ),
    heads_chains=(("lm_head",),),
)

# DBRX: a fused `Wqkv` of [q (H heads); k (H_kv); v (H_kv)] blocks (`split([hidden, kv, kv])`), H_kv from
# `attn_config.kv_n_heads`; experts stacked along the rows of `w1`, `v1` (gate, up) and `w2` (down, in x out)
DBRX = Family(
    name="dbrx",
    model_types=("dbrx",),
    stacks=(
        Stack(
            blocks=r"blocks\.\d+\.",
            attention=(Attention(qkv="norm_attn_norm.attn.Wqkv", o="norm_attn_norm.attn.out_proj"),),
            mlp_in=(),
            mlp_out="",
            embed=("wte",),
            router=("ffn.router.layer",),
            experts="ffn.experts.mlp",
        ),
    ),
    heads_chains=(("lm_head",),),
    heads=lambda config: (
        config.get("n_heads"),
        (config.get("attn_config") or {}).get("kv_n_heads") or config.get("n_heads"),
    ),
)
