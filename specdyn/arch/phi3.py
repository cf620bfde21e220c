"""Phi-3 and GLM: Phi-3's `qkv_proj` rows are [q (H heads); k (H_kv); v (H_kv)] (Phi3Attention.forward slices
at `query_pos = H * head_dim`), grouped-query attention through `repeat_kv`. Both fuse the MLP's gate and up
projections in `gate_up_proj` (`gate, up = gate_up_proj(x).chunk(2, dim=-1)`; down(act(gate) * up)), so each
half of its rows feeds `down_proj`. GLM and GLM-4 keep q, k, v separate."""

from specdyn.arch.base import Attention, Family, Stack

PHI3 = Family(
    name="phi3",
    model_types=("phi3",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(Attention(qkv="self_attn.qkv_proj", o="self_attn.o_proj"),),
            mlp_in=(),
            mlp_fused="mlp.gate_up_proj",
            mlp_out="mlp.down_proj",
            embed=("embed_tokens",),
        ),
    ),
    heads_chains=(("lm_head",),),
    layout=lambda config: "blocks",
)

GLM = Family(
    name="glm",
    model_types=("glm", "glm4"),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(
                Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj"),
            ),
            mlp_in=(),
            mlp_fused="mlp.gate_up_proj",
            mlp_out="mlp.down_proj",
            embed=("embed_tokens",),
        ),
    ),
    heads_chains=(("lm_head",),),
)
