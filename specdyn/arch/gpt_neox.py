"""GPT-NeoX (Pythia): `query_key_value` rows are laid out per head, [heads, 3, head_dim]
(GPTNeoXAttention.forward: `.view(*input_shape, -1, 3 * head_dim)` then `chunk(3, dim=-1)`); attention and MLP
read the same block input when `use_parallel_residual` (the default)."""

from specdyn.arch.base import Attention, Family, Stack

FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(Attention(qkv="attention.query_key_value", o="attention.dense"),),
            mlp_in=("mlp.dense_h_to_4h",),
            mlp_out="mlp.dense_4h_to_h",
            embed=("embed_in",),
        ),
    ),
    heads_chains=(("lm_head|embed_out",),),
    layout=lambda config: "per_head",
    parallel=lambda config: bool(config.get("use_parallel_residual", True)),
)

# GPT-NeoX-Japanese: the same per-head `query_key_value` (`view(..., H, 3 * head_size)`, then q, k, v slices of
# the last axis), sequential blocks (the MLP reads the attention's output), head `embed_out`
JAPANESE = Family(
    name="gpt_neox_japanese",
    model_types=("gpt_neox_japanese",),
    stacks=FAMILY.stacks,
    heads_chains=(("embed_out",),),
    layout=lambda config: "per_head",
)

# Persimmon: `query_key_value` viewed as (H, 3, head_dim) (PersimmonAttention._split_heads), sequential blocks
PERSIMMON = Family(
    name="persimmon",
    model_types=("persimmon",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(Attention(qkv="self_attn.query_key_value", o="self_attn.dense"),),
            mlp_in=("mlp.dense_h_to_4h",),
            mlp_out="mlp.dense_4h_to_h",
            embed=("embed_tokens",),
        ),
    ),
    heads_chains=(("lm_head",),),
    layout=lambda config: "per_head",
)
