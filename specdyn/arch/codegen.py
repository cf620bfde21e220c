"""CodeGen: `qkv_proj` rows are viewed as (mp_num = 4, 3, D / 4) and split per group in the order q, v, k
(CodeGenAttention.forward: `view(..., -1, 3 * local_dim)`, `query, value, key = qkv.split(local_dim)`, then each
reshaped to (H, head_dim)); mp_num is a constant of transformers' code. Attention and MLP read the same block
input (`attn_output + feed_forward_hidden_states + residual`); an untied LM head."""

from specdyn.arch.base import Attention, Family, Stack

FAMILY = Family(
    name="codegen",
    model_types=("codegen",),
    stacks=(
        Stack(
            blocks=r"h\.\d+\.",
            attention=(Attention(qkv="attn.qkv_proj", o="attn.out_proj"),),
            mlp_in=("mlp.fc_in",),
            mlp_out="mlp.fc_out",
            embed=("wte",),
        ),
    ),
    heads_chains=(("lm_head",),),
    layout=lambda config: "codegen",
    parallel=lambda config: True,
)
