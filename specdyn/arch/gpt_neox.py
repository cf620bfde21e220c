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
