"""GPT-2: Conv1D weights (in x out, transposed so rows are outputs); `c_attn` fuses q, k, v as column thirds
(`split(split_size, dim=2)` in GPT2Attention.forward), so after the transpose its rows are [q; k; v] blocks."""

from specdyn.arch.base import Attention, Family, Stack

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    stacks=(
        Stack(
            blocks=r"h\.\d+\.",
            attention=(Attention(qkv="attn.c_attn", o="attn.c_proj"),),
            mlp_in=("mlp.c_fc",),
            mlp_out="mlp.c_proj",
            embed=("wte",),
        ),
    ),
    heads_chains=(("lm_head",),),
    layout=lambda config: "blocks",
)
