"""Llama and the models that share its modules (Mistral, Qwen2): separate q/k/v/o projections with grouped-query
attention (`num_key_value_heads`; `repeat_kv` gives query head h the key/value head h // (H / H_kv)) and a gated
MLP (down(act(gate(x)) * up(x)), so both gate and up feed down)."""

from specdyn.arch.base import Attention, Family, Stack

# separate q/k/v/o under `self_attn`; the mixtures of experts built on Llama (arch/moe.py) reuse it
ATTENTION = (Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj"),)

FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=ATTENTION,
            mlp_in=("mlp.gate_proj", "mlp.up_proj"),
            mlp_out="mlp.down_proj",
            embed=("embed_tokens",),
        ),
    ),
    heads_chains=(("lm_head",),),
)
