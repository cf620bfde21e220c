"""OPT: separate q/k/v projections (registered k, v, q) and `out_proj`, MLP fc1 -> fc2; when
`word_embed_proj_dim` differs from the hidden size, `project_in`/`project_out` sit between the embedding, the
blocks and the (tied) LM head."""

from specdyn.arch.base import Attention, Family, Stack

FAMILY = Family(
    name="opt",
    model_types=("opt",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(
                Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj"),
            ),
            mlp_in=("fc1",),
            mlp_out="fc2",
            embed=("decoder.embed_tokens", "project_in"),
        ),
    ),
    heads_chains=(("project_out", "lm_head"),),
)
